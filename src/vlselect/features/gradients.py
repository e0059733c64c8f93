"""Exact per-sample LoRA gradients, a whole batch per backward pass, projected to a few thousand dimensions.

ICONS, TIVE and LESS need, for every sample ``i``, the gradient ``g_i`` of its own loss with respect to the LoRA
weights of a warm-up reference model (icons.md §2.2-2.3, tive.md §4.1-4.4, survey.md §5.2). The official code runs
one sample per backward pass. Here a batch runs in one forward and one backward:

* a forward hook on every hooked ``nn.Linear`` (PEFT's ``lora_A`` / ``lora_B`` modules) keeps its input ``x_t`` and
  its output tensor; the backward pass, ``torch.autograd.grad(sum_i L_i, outputs)``, returns each layer's output
  gradients ``delta_t`` for the whole batch;
* because the batch loss is the **sum** of the per-sample losses and samples do not interact, sample ``i``'s rows of
  ``delta`` are exactly ``dL_i/d out``, and its weight gradient is ``sum_t delta_t x_t^T`` over its own tokens. For
  PEFT's LoRA this is ``grad_B = sum_t delta_t (A x_t)^T`` and ``grad_A = sum_t (B^T delta_t * s) x_t^T`` with the
  scaling ``s = alpha/r`` already inside ``delta`` (autograd puts it there); dropout is off (eval mode);
* padding positions are zeroed in ``x`` (they carry no gradient anyway: labels are -100 there);
* the per-sample loss is the official one: the mean token cross-entropy over the sample's supervised (answer)
  tokens, ``L_i = -(1/|S_i|) sum_{t in S_i} log p(y_t | y_<t)`` (icons.md §2.2, tive.md §4.2), the package's one
  definition (:func:`vlselect.features.losses.per_sample_loss`): NaN for a sample without an answer token, whose
  gradient is then zero (counted as ``empty_answer_samples`` in the store's manifest);
* the gradient vector is the concatenation of the parameters in ``model.named_parameters()`` order, each flattened
  row-major: per module ``lora_A`` (r x in) then ``lora_B`` (out x r) (icons.md §2.3, tive.md §4.3).

Each layer's per-sample gradient is projected as it is produced (the projection is linear; see
:mod:`vlselect.features.projection`), or buffered over many samples and projected at once when it is small, so the
random matrix is generated once per buffer rather than once per 4 or 16 samples as in the official code. The full
(unprojected) L2 norm of each gradient, TIVE's input to its task value (tive.md §4.4), is computed alongside.

Optional LESS preconditioning with a warm-up Adam state (icons.md §2.3, last bullet):
``(beta1*m + (1-beta1)*g) / sqrt(beta2*v + (1-beta2)*g**2 + eps)`` with frozen ``m, v`` and no bias correction.
ICONS and TIVE use plain gradients (the default).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch

from vlselect.errors import ConfigError, FeatureError, ModelError
from vlselect.features.losses import per_sample_loss  # the one per-sample loss (NaN for an empty answer)
from vlselect.features.projection import DEFAULT_DIMS, FactoredProjection, Projection

#: what a gradient store's content depends on (its code version, vlselect.artifact.code_version)
CODE_MODULES = ("vlselect.features.gradients", "vlselect.features.projection", "vlselect.features.store",
                "vlselect.models.encode", "vlselect.models.load")

#: Which trainable parameters a method takes gradients of (icons.md §1: every LoRA A/B; tive.md §4.1: LoRA A/B of
#: the attention projections only).
PARAM_SELECTORS: dict[str, Callable[[str], bool]] = {
    "lora": lambda name: "lora_" in name,
    "self_attn": lambda name: "lora_" in name and "self_attn" in name,
}

ProjectionName = Literal["rademacher", "gaussian", "factored", "none"]
PROJECTIONS = ("rademacher", "gaussian", "factored", "none")

#: LESS / Adam constants (icons.md §2.3).
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def model_inputs(batch: Mapping[str, Any], device: torch.device | str | None = None) -> dict[str, Any]:
    """The forward arguments of a collated batch: everything but ``labels`` (and bookkeeping keys), on ``device``."""
    skip = {"labels", "ids", "id", "index", "indices", "rows", "image_mask", "text_mask"}
    out = {}
    for k, v in batch.items():
        if k in skip:
            continue
        out[k] = v.to(device) if (device is not None and isinstance(v, torch.Tensor)) else v
    out["use_cache"] = False
    return out


@dataclass
class _Param:
    name: str
    module_name: str
    module: torch.nn.Linear
    kind: str  # "weight" | "bias"
    offset: int
    numel: int
    shape: tuple[int, ...]


def select_parameters(model: torch.nn.Module, params: str = "lora") -> list[tuple[str, torch.nn.Parameter]]:
    """Mark the parameters a method differentiates as trainable (and all others frozen); return them in
    ``named_parameters`` order.

    Parameters
    ----------
    model:
        A PEFT LoRA model (or any model whose selected parameters are ``nn.Linear`` weights or biases).
    params:
        ``"lora"``: every LoRA A/B (ICONS, LESS; icons.md §1 ``set_lora_trainable``); ``"self_attn"``: LoRA A/B of
        the attention projections only (TIVE; tive.md §4.1).
    """
    if params not in PARAM_SELECTORS:
        raise ConfigError(f"parameter set {params!r} is unknown; use one of {', '.join(PARAM_SELECTORS)}")
    keep = PARAM_SELECTORS[params]
    chosen = []
    for name, p in model.named_parameters():
        sel = keep(name)
        p.requires_grad_(sel)
        if sel:
            chosen.append((name, p))
    if not chosen:
        raise ModelError(
            f"the model has no parameter matching the '{params}' set (names containing 'lora_'"
            + (" and 'self_attn'" if params == "self_attn" else "")
            + "); fix: pass --lora DIR with a PEFT LoRA adapter, or train one with 'vlselect train warmup'"
        )
    return chosen


def _strip_prefix(name: str) -> str:
    for pre in ("base_model.model.", "module."):
        if name.startswith(pre):
            name = name[len(pre) :]
    return name.replace(".default.", ".")


def load_adam_state(path: str | Path, names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Read a warm-up Adam state and map it to parameter names.

    Accepted files (``torch.load``): a ``{param_name: {"exp_avg", "exp_avg_sq"}}`` dict (what LESS's
    ``prepare_optimizer_state`` and ICONS's ``process_adam_optimizer_states`` produce), or a PyTorch optimizer
    ``state_dict()`` (``{"state": {i: {...}}, "param_groups": [...]}``, e.g. a Trainer's ``optimizer.pt``). An
    optimizer state dict is matched by ``param_groups[*]["param_names"]`` when present, else by position: its
    parameters, in group order, must be the selected parameters in ``named_parameters`` order.

    Returns
    -------
    dict
        ``name -> (exp_avg, exp_avg_sq)`` as float32 flat tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FeatureError(f"Adam state file '{path}' does not exist; fix: pass the optimizer state saved by "
                           "'vlselect train warmup' (adam_state.pt in its output) or drop --adam-state")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise FeatureError(f"cannot read Adam state '{path}': {type(exc).__name__}: {exc}; fix: pass a torch.save "
                           "file of an optimizer state_dict or a {name: {exp_avg, exp_avg_sq}} dict") from exc
    by_short = {_strip_prefix(n): n for n in names}
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if isinstance(raw, Mapping) and "state" in raw and "param_groups" in raw:
        order: list[Any] = []
        group_names: list[str] | None = []
        for g in raw["param_groups"]:
            order.extend(g["params"])
            if group_names is not None and "param_names" in g:
                group_names.extend(g["param_names"])
            else:
                group_names = None
        if group_names is not None and len(group_names) == len(order):
            pairs = [(by_short.get(_strip_prefix(n)), raw["state"].get(i, {})) for n, i in zip(group_names, order)]
        else:
            if len(order) != len(names):
                raise FeatureError(
                    f"Adam state '{path}' has {len(order)} parameters but {len(names)} are selected; fix: use the "
                    "optimizer state of the same LoRA run (same targets and rank)"
                )
            pairs = [(n, raw["state"].get(i, {})) for n, i in zip(names, order)]
        for n, st in pairs:
            if n is not None and "exp_avg" in st:
                out[n] = (st["exp_avg"], st["exp_avg_sq"])
    elif isinstance(raw, Mapping):
        for k, st in raw.items():
            n = by_short.get(_strip_prefix(str(k)))
            if n is not None and isinstance(st, Mapping) and "exp_avg" in st:
                out[n] = (st["exp_avg"], st["exp_avg_sq"])
    missing = [n for n in names if n not in out]
    if missing:
        raise FeatureError(f"Adam state '{path}' has no moments for {len(missing)} selected parameters (first: "
                           f"'{missing[0]}'); fix: use the optimizer state saved with this LoRA adapter")
    for n, shape in zip(names, shapes):
        m, v = out[n]
        if m.numel() != math.prod(shape) or v.numel() != math.prod(shape):
            raise FeatureError(f"Adam state '{path}': moments of '{n}' have {m.numel()} entries, the parameter has "
                               f"{math.prod(shape)}; fix: use the optimizer state of this exact adapter")
        out[n] = (m.detach().float().reshape(-1), v.detach().float().reshape(-1))
    return out


class GradientEngine:
    """Batched exact per-sample gradients of a LoRA model, optionally projected.

    Parameters
    ----------
    model:
        A PEFT LoRA model (``PeftModel``) in eval mode (dropout off). Its parameters' ``requires_grad`` flags are
        set by ``params``.
    params:
        ``"lora"`` (ICONS, LESS) or ``"self_attn"`` (TIVE); see :func:`select_parameters`.
    projection:
        ``"rademacher"`` (default, as the official code), ``"gaussian"``, ``"factored"`` (LoGra, a different
        sketch) or ``"none"`` (return the full gradients: small models and tests only).
    dim:
        Output dimension (5,120 ICONS, 8,192 TIVE/LESS).
    seed:
        Projection seed (official: 0).
    factor_dim:
        Per-side dimension of the factored sketch.
    adam_state:
        ``name -> (exp_avg, exp_avg_sq)`` (see :func:`load_adam_state`) for LESS preconditioning, or ``None``
        (plain gradients, the ICONS/TIVE default).
    buffer_bytes:
        Full per-sample gradients are buffered up to this many bytes and projected together, so the random matrix
        is generated once per buffer; gradients larger than that are projected layer by layer as they come.
    block_bytes:
        Memory for one generated block of the random matrix.

    Examples
    --------
    >>> engine = GradientEngine(peft_model, projection="rademacher", dim=8192)  # doctest: +SKIP
    >>> for rows, feats, norms in engine.run(batches):  # doctest: +SKIP
    ...     store.write(rows, gradients=feats, grad_norms=norms)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        params: str = "lora",
        projection: ProjectionName = "rademacher",
        dim: int = DEFAULT_DIMS["tive"],
        seed: int = 0,
        factor_dim: int = 64,
        adam_state: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
        adam_betas: tuple[float, float] = ADAM_BETAS,
        adam_eps: float = ADAM_EPS,
        buffer_bytes: int = 512 * 2**20,
        block_bytes: int = 64 * 2**20,
    ) -> None:
        if projection not in PROJECTIONS:
            raise ConfigError(f"projection {projection!r} is unknown; use one of {', '.join(PROJECTIONS)}")
        if projection == "factored" and adam_state is not None:
            raise ConfigError("Adam preconditioning needs the full gradient and cannot be combined with the factored "
                              "projection; fix: use --projection rademacher or gaussian with --adam-state")
        self.model = model
        self.model.eval()  # LoRA dropout off, as PEFT's inference mode in the official code
        for m in model.modules():  # recomputation would bypass the captured layer outputs
            if getattr(m, "gradient_checkpointing", False):
                m.gradient_checkpointing = False
        self.device = next(model.parameters()).device
        chosen = select_parameters(model, params)
        self.param_set = params
        self.params: list[_Param] = []
        offset = 0
        modules: dict[str, torch.nn.Linear] = {}
        for name, p in chosen:
            mod_name, _, kind = name.rpartition(".")
            mod = model.get_submodule(mod_name)
            if not isinstance(mod, torch.nn.Linear) or kind not in ("weight", "bias"):
                raise ModelError(
                    f"trainable parameter '{name}' is not the weight or bias of a linear layer; per-sample gradients "
                    "are computed for linear (LoRA A/B) layers only; fix: train a LoRA adapter on linear layers"
                )
            self.params.append(_Param(name, mod_name, mod, kind, offset, p.numel(), tuple(p.shape)))
            modules[mod_name] = mod
            offset += p.numel()
        self.num_params = offset
        self.modules = modules
        self.projection = projection
        self.adam = None
        if adam_state is not None:
            self.adam = {n: (m.to(self.device), v.to(self.device)) for n, (m, v) in adam_state.items()}
            missing = [p.name for p in self.params if p.name not in self.adam]
            if missing:
                raise FeatureError(f"the Adam state has no moments for '{missing[0]}'; fix: use the optimizer state "
                                   "saved with this LoRA adapter")
        self.adam_betas = adam_betas
        self.adam_eps = adam_eps
        self.buffer_bytes = int(buffer_bytes)
        self.dense: Projection | None = None
        self.factored: FactoredProjection | None = None
        if projection in ("rademacher", "gaussian"):
            self.dense = Projection(self.num_params, dim, kind=projection, seed=seed, block_bytes=block_bytes,
                                    device=self.device)
        elif projection == "factored":
            shapes = [(p.shape[0], p.shape[1] if p.kind == "weight" else 1) for p in self.params]
            self.factored = FactoredProjection(shapes, dim, factor_dim=factor_dim, seed=seed,
                                               block_bytes=block_bytes, device=self.device)
        self.out_dim = (
            self.num_params if projection == "none" else (self.dense.dim if self.dense else self.factored.out_dim)
        )
        self.empty_samples = 0
        self._captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------------------------------ hooks

    def _hook(self, name: str):
        def fn(module, inputs, output):
            if name in self._captured:
                raise ModelError(f"layer '{name}' ran twice in one forward pass; per-sample gradients need each "
                                 "LoRA layer to run once per sample; fix: target layers that are used once")
            self._captured[name] = (inputs[0], output)

        return fn

    @property
    def param_names(self) -> list[str]:
        """Parameter names in gradient order."""
        return [p.name for p in self.params]

    def losses(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward a batch and return ``(per-sample losses, supervised-token counts)``, keeping the graph."""
        out = self.model(**model_inputs(batch, self.device))
        return per_sample_loss(out.logits, batch["labels"].to(self.device))

    def _layer_grads(self, batch: Mapping[str, Any]):
        """One forward and one backward; returns ``(b, {module: (x, delta)})`` with padding zeroed in ``x``."""
        handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        self._captured = {}
        try:
            with torch.enable_grad():
                losses, counts = self.losses(batch)
        finally:
            for h in handles:
                h.remove()
        b = losses.shape[0]
        self.empty_samples += int((counts == 0).sum())
        names = [n for n, (_, o) in self._captured.items() if o.requires_grad]
        outs = [self._captured[n][1] for n in names]
        # an empty answer's loss is NaN (no supervised token): nansum gives it a zero gradient
        grads = torch.autograd.grad(torch.nansum(losses), outs, allow_unused=True) if outs else []
        gmap = dict(zip(names, grads))
        if outs and int(counts.sum()) > 0 and all(g is None for g in grads):
            raise ModelError("no gradient reached the LoRA layers although the batch has answer tokens; fix: load the "
                             "model without activation checkpointing and with the adapter's layers in the forward path")
        mask = batch.get("attention_mask")
        res = {}
        for n, mod in self.modules.items():
            if n not in self._captured:
                res[n] = None  # layer not run: zero gradient
                continue
            x, out = self._captured[n]
            g = gmap.get(n)
            if g is None:
                res[n] = None
                continue
            if x.shape[0] != b:
                raise ModelError(
                    f"layer '{n}' sees a leading dimension of {x.shape[0]} for a batch of {b} samples (a vision "
                    "tower layer?); per-sample gradients need layers of the language model; fix: do not put LoRA on "
                    "the vision tower, or use --batch-size 1"
                )
            x = x.detach().reshape(b, -1, x.shape[-1])
            g = g.detach().reshape(b, -1, g.shape[-1])
            if mask is not None and x.shape[1] == mask.shape[1]:
                x = x * mask.to(x.device, x.dtype).unsqueeze(-1)
            res[n] = (x, g)
        self._captured = {}
        return b, res

    def _param_grad(self, p: _Param, xg) -> torch.Tensor:
        b_x, b_g = xg
        if p.kind == "weight":
            return torch.einsum("bto,bti->boi", b_g.float(), b_x.float()).reshape(b_g.shape[0], -1)
        return b_g.float().sum(dim=1)

    def _precondition(self, p: _Param, g: torch.Tensor) -> torch.Tensor:
        m, v = self.adam[p.name]
        b1, b2 = self.adam_betas
        return (b1 * m + (1 - b1) * g) / torch.sqrt(b2 * v + (1 - b2) * g * g + self.adam_eps)

    # ------------------------------------------------------------------------------------------ public

    def full_gradients(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The full per-sample gradients ``(b, D)`` float32 (Adam-preconditioned if an Adam state was given) and
        the L2 norms ``(b,)`` of the plain gradients."""
        return self._full_from(*self._layer_grads(batch))

    def _full_from(self, b: int, res) -> tuple[torch.Tensor, torch.Tensor]:
        full = torch.zeros(b, self.num_params, dtype=torch.float32, device=self.device)
        sq = torch.zeros(b, dtype=torch.float64, device=self.device)
        for p in self.params:
            xg = res[p.module_name]
            if xg is None:
                continue
            g = self._param_grad(p, xg)
            sq += (g.double() ** 2).sum(dim=1)
            full[:, p.offset : p.offset + p.numel] = self._precondition(p, g) if self.adam else g
        if self.adam:  # parameters with no gradient still get the preconditioned zero gradient
            for p in self.params:
                if res[p.module_name] is None:
                    full[:, p.offset : p.offset + p.numel] = self._precondition(p, torch.zeros(b, p.numel, device=self.device))
        return full, sq.sqrt().float()

    def _project_streaming(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self._streaming_from(batch, *self._layer_grads(batch))

    def _streaming_from(self, batch, b: int, res) -> tuple[torch.Tensor, torch.Tensor]:
        sq = torch.zeros(b, dtype=torch.float64, device=self.device)
        if self.factored is not None:
            parts = []
            for i, p in enumerate(self.params):
                xg = res[p.module_name]
                o, n_in = self.factored.out_shapes[i]
                if xg is None:
                    parts.append(torch.zeros(b, o * n_in, device=self.device))
                    continue
                x, g = xg
                if p.kind == "bias":
                    x = torch.ones(*x.shape[:2], 1, dtype=x.dtype, device=x.device)
                    if "attention_mask" in batch and x.shape[1] == batch["attention_mask"].shape[1]:
                        x = x * batch["attention_mask"].to(x.device, x.dtype).unsqueeze(-1)
                via_tokens, via_grad = self.factored.route_costs(i, x.shape[1])
                if via_grad < via_tokens:
                    # this layer's per-sample gradient is smaller than its token factors (a LoRA layer: r x in):
                    # form it, take the exact norm and the (identical, linear) sketch from it, drop it
                    grad = torch.bmm(g.float().transpose(1, 2), x.float())
                    sq += grad.reshape(b, -1).square().sum(dim=1, dtype=torch.float64)
                    parts.append(self.factored.sketch_gradient(i, grad))
                    del grad
                    continue
                parts.append(self.factored.sketch_layer(i, g, x))
                # exact norm of the full gradient from the token factors: ||sum_t g_t x_t^T||_F^2 via Gram matrices
                gg = torch.einsum("bso,bto->bst", g.double(), g.double())
                xx = torch.einsum("bsi,bti->bst", x.double(), x.double())
                sq += (gg * xx).sum(dim=(1, 2))
            return torch.cat(parts, dim=1), sq.sqrt().float()  # un-finished: run() applies the final projection
        out = torch.zeros(b, self.dense.dim, dtype=torch.float32, device=self.device)
        for p in self.params:
            xg = res[p.module_name]
            if xg is None and not self.adam:
                continue
            g = self._param_grad(p, xg) if xg is not None else torch.zeros(b, p.numel, device=self.device)
            sq += (g.double() ** 2).sum(dim=1)
            self.dense.project_into(out, self._precondition(p, g) if self.adam else g, p.offset)
        return out, sq.sqrt().float()

    def run(self, batches: Iterable[Mapping[str, Any]]) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Featurise batches in order.

        Yields
        ------
        (start, features, norms)
            ``start``: the position (counted over all samples passed in) of the first row; ``features``
            ``(n, out_dim)`` float32 on CPU (projected, or full gradients with ``projection="none"``); ``norms``
            ``(n,)`` float32, the L2 norm of each sample's plain (unprojected, unpreconditioned) gradient.
        """
        for start, ((feats, norms),) in run_engines([self], batches):
            yield start, feats, norms

    # one batch's rows before the final step of run_engines, and that final step
    def _rows_from(self, batch, b: int, res, buffered: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if self.projection == "none" or (buffered and self.factored is None):
            return self._full_from(b, res)  # full gradients: returned as they are, or projected together at flush
        return self._streaming_from(batch, b, res)  # factored sketches (finished at flush) or dense projected rows

    def _finish_rows(self, rows: torch.Tensor, buffered: bool) -> torch.Tensor:
        if self.factored is not None:
            return self.factored.finish(rows)
        if self.dense is not None and buffered:
            return self.dense.project(rows)
        return rows

    def _buffer_row_bytes(self) -> int:
        return 4 * (self.factored.dim_factored if self.factored is not None else self.num_params)


def run_engines(engines: Sequence[GradientEngine], batches: Iterable[Mapping[str, Any]]
                ) -> Iterator[tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]]:
    """Featurise batches for several engines of one model with **one** forward and backward pass per batch (e.g.
    ICONS's every-LoRA gradients and TIVE's self-attention ones, tive.md §3).

    The first engine's parameters must include every other engine's (its hooks capture the layers all of them
    need); each engine keeps its own projection, so its rows equal what a pass of its own gives (up to float
    rounding of the batched projection).

    Yields
    ------
    (start, [(features, norms), ...])
        One ``(features, norms)`` per engine, in order, as :meth:`GradientEngine.run` yields them.
    """
    engines = list(engines)
    lead = engines[0]
    if len({e.projection == "none" for e in engines}) > 1:
        raise ConfigError("engines sharing a pass must all project, or all return full gradients")
    for e in engines[1:]:
        if e.model is not lead.model:
            raise ConfigError("engines sharing a pass must wrap the same model")
        extra = sorted(set(e.modules) - set(lead.modules))
        if extra:
            raise ConfigError(f"the first engine ('{lead.param_set}') does not hook layer '{extra[0]}' that engine "
                              f"'{e.param_set}' needs; fix: put the engine with the largest parameter set first")
    # every constructor marks its own set trainable (and the rest frozen): the lead's set must be the one marked
    select_parameters(lead.model, lead.param_set)
    start = 0
    full_only = all(e.projection == "none" for e in engines)
    # rows buffered before the (final) projection: full gradients (dense) or layer sketches (factored)
    dense_bytes = sum(e._buffer_row_bytes() for e in engines if e.factored is None and e.projection != "none")
    row_bytes = sum(e._buffer_row_bytes() for e in engines if e.projection != "none")
    budget = min(e.buffer_bytes for e in engines)
    pending: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    pending_rows = 0

    def layer_grads(batch):
        empty = lead.empty_samples
        b, res = lead._layer_grads(batch)
        for e in engines[1:]:  # every engine counts the samples without an answer token it saw
            e.empty_samples += lead.empty_samples - empty
        return b, res

    def flush():
        nonlocal pending, pending_rows, start
        outs = []
        for k, e in enumerate(engines):
            parts = [p[k] for p in pending]
            rows = torch.cat([f for f, _ in parts]) if len(parts) > 1 else parts[0][0]
            norms = torch.cat([n for _, n in parts])
            outs.append((e._finish_rows(rows, True).cpu(), norms.cpu()))
        item = (start, outs)
        start += pending_rows
        pending, pending_rows = [], 0
        return item

    for batch in batches:
        n = int(batch["input_ids"].shape[0])
        if full_only:
            b, res = layer_grads(batch)
            yield start, [tuple(t.cpu() for t in e._full_from(b, res)) for e in engines]
            start += b
            continue
        if n * dense_bytes <= budget:
            if pending and (pending_rows + n) * row_bytes > budget:
                yield flush()
            b, res = layer_grads(batch)
            pending.append([e._rows_from(batch, b, res, True) for e in engines])
            pending_rows += n
            continue
        if pending:
            yield flush()
        b, res = layer_grads(batch)  # too large to buffer: dense engines project layer by layer
        outs = []
        for e in engines:
            rows, norms = e._rows_from(batch, b, res, False)
            outs.append((e._finish_rows(rows, False).cpu(), norms.cpu()))
        yield start, outs
        start += n
    if pending:
        yield flush()


def per_sample_autograd_gradients(
    model: torch.nn.Module, single_batches: Iterable[Mapping[str, Any]], names: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official way: one sample per forward/backward, ``torch.autograd.grad`` of its mean answer loss, gradients
    flattened and concatenated in ``names`` order (icons.md §2.3, tive.md §4.3). The reference in the tests and the
    baseline of the benchmark.

    Parameters
    ----------
    model:
        The model (parameters in ``names`` must require grad, e.g. after :func:`select_parameters`).
    single_batches:
        Batches of one sample each, unpadded (as the official ``DataLoader(batch_size=1)`` makes them).
    names:
        Parameter names in gradient order (:attr:`GradientEngine.param_names`).

    Returns
    -------
    (grads, losses)
        ``(n, D)`` float32 and ``(n,)`` float32.
    """
    params = dict(model.named_parameters())
    plist = [params[n] for n in names]
    dev = plist[0].device
    rows, losses = [], []
    for single in single_batches:
        if single["input_ids"].shape[0] != 1:
            raise ConfigError("the per-sample reference takes batches of one sample")
        with torch.enable_grad():
            out = model(**model_inputs(single, dev))
            loss, _ = per_sample_loss(out.logits, single["labels"].to(dev))
            gs = torch.autograd.grad(torch.nansum(loss[:1]), plist, allow_unused=True)  # empty answer: zero
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(gs, plist)]))
        losses.append(loss[0].detach().float())
    return torch.stack(rows), torch.stack(losses)


# ---------------------------------------------------------------------------------------------- the extractor


def _file_digest(paths: Sequence[Path]) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()


def attach_lora(model: torch.nn.Module, lora_dir: str | Path) -> tuple[torch.nn.Module, str]:
    """Load the PEFT LoRA adapter in ``lora_dir`` onto ``model`` (not merged, eval mode, as TIVE does; icons.md §1
    describes ICONS's double application of a merged adapter, which is not reproduced). Returns the wrapped model
    and a hash of the adapter files."""
    lora_dir = Path(lora_dir)
    files = [p for p in lora_dir.glob("adapter_*")] if lora_dir.is_dir() else []
    if not (lora_dir / "adapter_config.json").exists():
        raise ModelError(f"LoRA directory '{lora_dir}' has no adapter_config.json; fix: pass the adapter folder saved "
                         "by 'vlselect train warmup' (or any PEFT save_pretrained output) to --lora")
    from peft import PeftModel

    from vlselect.models.peft_wrap import quiet_peft_wrap

    try:
        with quiet_peft_wrap():
            wrapped = PeftModel.from_pretrained(model, str(lora_dir), is_trainable=False)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot load the LoRA adapter in '{lora_dir}' onto this model: {type(exc).__name__}: {exc}; "
                         "fix: use an adapter trained on the same base model (--model)") from exc
    wrapped.eval()
    return wrapped, _file_digest(files)


def extract_gradients(
    model: str | Path | Any,
    lora: str | Path | None,
    pool: Any,
    out: str | Path | Mapping[str, str | Path],
    *,
    image_root: str | Path | None = None,
    dim: int = DEFAULT_DIMS["tive"],
    projection: ProjectionName = "rademacher",
    seed: int = 0,
    params: str = "lora",
    adam_state: str | Path | None = None,
    norms: bool = True,
    batch_size: int = 8,
    shard_size: int = 256,
    shard: str | tuple[int, int] | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    factor_dim: int = 64,
    max_length: int | None = None,
    skip_bad: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    progress: bool = True,
    stop_after_shards: int | None = None,
    overwrite: bool = False,
):
    """Per-sample projected LoRA gradients of a pool (or a validation set) into a :class:`FeatureStore`.

    Arrays written: ``gradients`` (``(N, dim)`` float32: ``P g_i``, unnormalised; ICONS/TIVE normalise rows
    downstream, icons.md §2.5, tive.md §5) and, with ``norms``, ``grad_norms`` (``(N,)`` float32: ``||g_i||_2`` of
    the plain unprojected gradient, TIVE's task-value input, tive.md §4.4). Validation-set gradients for ICONS's
    target tasks (icons.md §3) are the same call on the validation file, with the same model, adapter, seed and
    dim.

    Parameters
    ----------
    model:
        Base model directory (or a :class:`vlselect.models.LoadedVLM`).
    lora:
        PEFT adapter directory (the warm-up reference model), or ``None`` if ``model`` already carries LoRA layers.
    pool:
        Pool file, :class:`vlselect.pool.Pool` or list of :class:`Sample`.
    out:
        Store directory; re-running the same command resumes it. A mapping ``{parameter set: directory}`` (e.g.
        ``{"lora": "grads", "self_attn": "grads_tive"}``) computes several parameter sets' stores with one forward
        and backward pass per batch (:func:`run_engines`); ``params`` is then ignored. Each store is the one a call
        of its own would write (same meta, same rows up to float rounding), so either can be resumed alone.
    image_root:
        Folder the image paths are relative to.
    dim, projection, seed, params, factor_dim:
        See :class:`GradientEngine` (defaults: 8,192-d Rademacher, seed 0, every LoRA A/B).
    adam_state:
        Optimizer-state file for LESS preconditioning (:func:`load_adam_state`); ``None`` for plain gradients.
    norms:
        Also store ``grad_norms``.
    batch_size:
        Samples per forward/backward pass (a memory knob; features do not depend on it beyond float rounding).
    shard_size:
        Rows per store shard (the unit of resumption and of work split).
    shard, rank, world_size:
        ``"i/N"`` for SLURM arrays; ``rank``/``world_size`` default to torchrun's ``RANK``/``WORLD_SIZE``.
    skip_bad:
        Record samples whose image cannot be read as missing (zero rows) instead of stopping.
    stop_after_shards:
        Stop after writing this many shards (for tests of resumption).
    overwrite:
        Recompute into ``out`` even if it holds a store of other inputs (otherwise an error naming what differs).

    Returns
    -------
    FeatureStore or dict of str to FeatureStore
        The store (finished if every shard is done); with a mapping ``out``, one per parameter set.

    Examples
    --------
    >>> extract_gradients("tiny", "tiny-warmup/lora", "pool.json", "grads", image_root="images")  # doctest: +SKIP
    """
    from vlselect.features.store import FeatureStore
    from vlselect.errors import PoolError
    from vlselect.models import collate, load_vlm, resolve_template
    from vlselect.models.encode_cache import encode_cache

    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size} must be at least 1")
    if projection not in PROJECTIONS:
        raise ConfigError(f"--projection {projection!r} is unknown; use one of {', '.join(PROJECTIONS)}")
    outs = {str(k): v for k, v in out.items()} if isinstance(out, Mapping) else {params: out}
    if not outs:
        raise ConfigError("no output store given")
    for name in outs:
        if name not in PARAM_SELECTORS:
            raise ConfigError(f"--params {name!r} is unknown; use one of {', '.join(PARAM_SELECTORS)}")
    if projection == "factored" and adam_state is not None:
        raise ConfigError("Adam preconditioning (--adam-state) needs the full gradient and cannot be combined with "
                          "--projection factored; fix: use rademacher or gaussian")
    from vlselect.artifact import code_version
    from vlselect.executor import current

    ex = current(shard, rank=rank, world_size=world_size)  # validates --shard before the model is loaded
    if isinstance(pool, (str, Path)):
        from vlselect.pool import open_pool

        pool = open_pool(pool, image_root=image_root)
    device = ex.device(device)  # torchrun: one GPU per rank
    loaded = model if hasattr(model, "model") and hasattr(model, "processor") else load_vlm(model, device=device, dtype=dtype)
    net = loaded.model
    lora_hash = None
    if lora is not None:
        net, lora_hash = attach_lora(net, lora)
    adam_hash = None if adam_state is None else _file_digest([Path(adam_state)])
    engines: dict[str, GradientEngine] = {}
    for name in outs:  # the engine picks the parameters; the Adam state is matched to them
        engine = GradientEngine(net, params=name, projection=projection, dim=dim, seed=seed, factor_dim=factor_dim)
        if adam_state is not None:
            adam = load_adam_state(adam_state, engine.param_names, [p.shape for p in engine.params])
            engine = GradientEngine(net, params=name, projection=projection, dim=dim, seed=seed,
                                    factor_dim=factor_dim, adam_state=adam)
        engines[name] = engine
    # the largest parameter set leads a shared pass (its hooks capture every layer the others need)
    order = sorted(engines, key=lambda k: -len(engines[k].modules))
    n = len(pool)

    def sample_at(i: int):
        return pool[i] if not hasattr(pool, "sample") else pool.sample(i)

    ids_attr = getattr(pool, "ids", None)
    ids = list(ids_attr() if callable(ids_attr) else ids_attr) if ids_attr is not None else [s.id for s in pool]
    samples_digest = None
    if getattr(pool, "fingerprint", None) is None:  # a list of samples (a validation set): key stores on content
        from dataclasses import asdict, is_dataclass

        from vlselect.artifact import digest

        samples_digest = digest([asdict(x) if is_dataclass(x) else repr(x) for x in map(sample_at, range(n))])
    if not ex.finalises:
        ex.barrier()  # rank 0 creates (or clears, under --overwrite) the folders first
    stores = {}
    # folders that already exist first: one holding other inputs refuses before a new folder is made for the rest
    for name, engine in sorted(engines.items(), key=lambda kv: not Path(outs[kv[0]]).exists()):
        arrays = {"gradients": (engine.out_dim, "float32")}
        if norms:
            arrays["grad_norms"] = (None, "float32")
        meta = {
            "kind": "gradients",
            "model": str(loaded.model_dir),
            "model_hash": loaded.model_hash,
            "template": resolve_template(loaded),  # how conversations became text; a resume must use the same
            "lora": None if lora is None else str(lora),
            "lora_hash": lora_hash,
            "params": name,
            "num_params": engine.num_params,
            "projection": projection,
            "dim": engine.out_dim,
            "seed": int(seed),
            "factor_dim": int(factor_dim) if projection == "factored" else None,
            "adam_state": adam_hash,
            "loss": "mean cross-entropy over the sample's answer tokens",
            "pool_fingerprint": getattr(pool, "fingerprint", None),
        }
        if samples_digest is not None:
            meta["samples_digest"] = samples_digest
        stores[name] = FeatureStore.create(outs[name], arrays=arrays, n_rows=n, shard_size=shard_size, meta=meta,
                                           sample_ids=ids, code=code_version(*CODE_MODULES),
                                           overwrite=overwrite and ex.is_main)
    if ex.finalises:
        ex.barrier()
    todo_of = {name: {sh.index: sh for sh in st.pending(ex.slot, ex.slots)} for name, st in stores.items()}
    todo = sorted({i: sh for t in todo_of.values() for i, sh in t.items()}.values(), key=lambda sh: sh.index)
    kill_after = int(os.environ.get("VLSELECT_TEST_KILL_AFTER_SHARDS", "0") or 0)

    from vlselect.progress import progress_bar

    total = sum(len(s) for s in todo)
    cache = encode_cache()  # a sample another stage of this process encoded is not encoded again
    with progress_bar("gradients", enabled=progress, unit="rows", transient=True) as bar:
        task = bar.add_task("", total=total)
        written = 0
        for sh in todo:
            missing: list[int] = []
            encoded: list[tuple[int, dict]] = []
            for i in range(sh.start, sh.stop):
                try:
                    encoded.append((i, cache.encode(loaded, sample_at(i), image_root, max_length=max_length)))
                except PoolError:
                    if not skip_bad:
                        raise
                    missing.append(i)
            names = [k for k in order if sh.index in todo_of[k]]  # the stores still missing this shard
            feats = {k: np.zeros((len(sh), engines[k].out_dim), dtype=np.float32) for k in names}
            nrm = {k: np.zeros(len(sh), dtype=np.float32) for k in names}
            rows = [i for i, _ in encoded]
            batches = (collate([e for _, e in encoded[j : j + batch_size]], loaded.pad_token_id)
                       for j in range(0, len(encoded), batch_size))
            for start, got in run_engines([engines[k] for k in names], batches):
                local = np.asarray(rows[start : start + got[0][0].shape[0]]) - sh.start
                for k, (f, nr) in zip(names, got):
                    feats[k][local] = f.numpy()
                    nrm[k][local] = nr.numpy()
                bar.advance(task, got[0][0].shape[0])
            bar.advance(task, len(missing))
            for k in names:
                data = {"gradients": feats[k]}
                if norms:
                    data["grad_norms"] = nrm[k]
                stores[k].write_shard(sh.index, data, missing)
            written += 1
            if kill_after and written >= kill_after:  # fault-injection tests: die like an OOM-killed job
                import signal

                os.kill(os.getpid(), signal.SIGKILL)
            if stop_after_shards is not None and written >= stop_after_shards:
                for st in stores.values():
                    st.close()
                return _stores_result(stores, out)
    ex.barrier()
    if ex.finalises:  # one process per job finalises, once every shard of every rank is done
        for name, st in stores.items():
            empty = engines[name].empty_samples
            st.finalise({"empty_answer_samples": empty} if empty else None)
    ex.barrier()
    for st in stores.values():
        st.close()
        if not st.finished and (st.path / "manifest.json").exists():
            st._manifest = json.loads((st.path / "manifest.json").read_text())
    return _stores_result(stores, out)


def _stores_result(stores: dict, out):
    return dict(stores) if isinstance(out, Mapping) else next(iter(stores.values()))
