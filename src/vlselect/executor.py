"""Executors: who computes which slice, on which device, and when the ranks meet (DESIGN.md, "Stages, artifacts,
executors"; datatrove's ``run(data, rank, world_size)``).

The one place that reads ``--shard i/N`` (SLURM arrays) and torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``,
picks a rank's device, starts the process group and waits at barriers. A stage never parses them itself: it asks
:func:`current` for an :class:`Executor` and computes the slots it is given.

A job of ``--shard i/N`` launched with torchrun on ``W`` ranks is slot ``i·W + rank`` of ``N·W`` slots; a store's
shard ``k`` belongs to slot ``k mod (N·W)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vlselect.errors import ConfigError


def parse_shard(spec: str | tuple[int, int] | None) -> tuple[int, int]:
    """Parse ``"i/N"`` (0-based ``i``) or an ``(i, N)`` pair into ``(i, N)``; ``None`` → ``(0, 1)``."""
    if spec is None or spec == "":
        return 0, 1
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        i, n = int(spec[0]), int(spec[1])
    else:
        try:
            i, n = (int(x) for x in str(spec).split("/"))
        except ValueError:
            i, n = -1, -1
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"bad --shard value {spec!r}; fix: write it as i/N with 0 <= i < N, e.g. --shard 0/4")
    return i, n


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer; fix: unset it or launch with "
                          "torchrun") from None


@dataclass(frozen=True)
class Executor:
    """Where this process sits: torchrun ``rank`` of ``world_size`` (``local_rank`` on its node) inside job
    ``shard_index`` of ``n_shards`` (``--shard i/N``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    shard_index: int = 0
    n_shards: int = 1
    spawned: bool = False
    """True when the ranks are real processes started by torchrun (a process group, barriers); False when a caller
    named ``rank`` / ``world_size`` itself (one process computing one rank's part: no group, no barrier)."""

    @property
    def slot(self) -> int:
        """This process's slot among every process of every job."""
        return self.shard_index * self.world_size + self.rank

    @property
    def slots(self) -> int:
        return self.n_shards * self.world_size

    @property
    def distributed(self) -> bool:
        """More than one torchrun process (a process group is needed)."""
        return self.spawned and self.world_size > 1

    @property
    def finalises(self) -> bool:
        """Whether this process finalises the job's output: rank 0 of a torchrun job (after a barrier); any
        process whose rank was named by the caller (the last one to finish succeeds)."""
        return self.is_main or not self.spawned

    @property
    def is_main(self) -> bool:
        """Rank 0 of its job: the one that writes shared files and finalises."""
        return self.rank == 0

    def device(self, requested=None):
        """``requested`` if given, else under torchrun with CUDA ``cuda:<local_rank>`` (one GPU per rank), else
        ``None`` (the loader's default)."""
        if requested is not None:
            return requested
        if self.distributed:
            import torch

            if torch.cuda.is_available():
                return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return None

    def init(self) -> "Executor":
        """Start the process group (nccl on CUDA, gloo on CPU) when distributed; set this rank's CUDA device."""
        if self.distributed:
            import torch
            import torch.distributed as dist

            if dist.is_available() and not dist.is_initialized():
                dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            if torch.cuda.is_available():
                torch.cuda.set_device(self.local_rank % torch.cuda.device_count())
        return self

    def barrier(self) -> None:
        """Wait for every rank (no-op on one process)."""
        if self.distributed:
            import torch.distributed as dist

            self.init()
            dist.barrier()


def current(shard: str | tuple[int, int] | None = None, *, rank: int | None = None,
            world_size: int | None = None) -> Executor:
    """The executor of this process: ``--shard`` plus torchrun's environment (``rank`` / ``world_size`` given
    explicitly override it)."""
    i, n = parse_shard(shard)
    w = _env_int("WORLD_SIZE", 1) if world_size is None else int(world_size)
    r = _env_int("RANK", 0) if rank is None else int(rank)
    if w < 1 or not 0 <= r < w:
        raise ConfigError(f"rank {r} of world size {w} is impossible; fix: launch with torchrun, or unset RANK / "
                          "WORLD_SIZE")
    local = _env_int("LOCAL_RANK", r)
    spawned = world_size is None and rank is None and _env_int("WORLD_SIZE", 1) > 1
    return Executor(rank=r, world_size=w, local_rank=local, shard_index=i, n_shards=n, spawned=spawned)


__all__ = ["Executor", "current", "parse_shard"]
