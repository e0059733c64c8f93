"""COINCIDE layer activations (coincide.md §1.4–1.5), with per-sample losses from the same forward pass (§7.2).

For each chosen decoder layer ℓ the output of ``self_attn.o_proj`` (the attention output after the output
projection, before the residual add) is captured with a forward hook, A_ℓ ∈ R^{B×T×H}. Per row:

- vision vector v = mean of A_ℓ over the row's **image-token positions** (``image_mask``);
- text vector u = mean of A_ℓ over the row's **text positions** (``text_mask``: everything after the last image
  token, or from the first user text on for a text-only row; see :mod:`vlselect.models.encode`);
- each part: tanh, then L2 normalisation (eps 1e-12), then ÷ √(2L) (L = number of layers);
- row = ``[v_ℓ1 | u_ℓ1 | v_ℓ2 | u_ℓ2 | …]`` in layer order, width 2·L·H, stored as float16.

Differences from the official code (spec §1.4, §1.5, Q7), deliberate:

- **Windows come from the masks, not fixed offsets.** The official code averages positions [31, 760) as
  "vision" and [760, 760+len) as "text", which is right only for TinyLLaVA-2.0B's tokenizer, template and 729
  image tokens. For that model and an image row the two definitions coincide; for any other model they differ.
- **Text-only rows** (no image token): the official windows average text and padding positions, so the features
  depend on the batch. Here the vision half is all zeros (the row's norm is 1/√2 instead of 1) and the text half is
  the mean over its text, independent of the batch; such rows are flagged in the ``has_image`` array (0) and
  counted in the manifest (``n_text_only``).
- Pooling is done in float32 (the official code pools in float16 on the GPU) before the float16 store.
- Samples are batched by length inside each shard (less padding); padding does not enter any mean.

Layers: the paper probes layers 3, 7, 11, 15, 19 (0-based) of TinyLLaVA-2.0B's 24. For a model with n layers,
layer l maps to ``floor((l+1)·n/24 + 0.5) − 1`` (same relative depth, counted from the end of the layer), clipped
to [0, n−1], duplicates removed (a 4-layer model gets [0, 1, 2]). ``--layers`` overrides this.

OOM: a batch that raises an out-of-memory error is split in two halves and each is retried (recursively), never by
truncating sequences; a single sample that does not fit raises :class:`~vlselect.errors.ModelError`.
"""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Sequence

import numpy as np

from vlselect.errors import ConfigError, FeatureError, ModelError, PoolError

PAPER_LAYERS = (3, 7, 11, 15, 19)
#: what an activation store's content depends on (its code version, vlselect.artifact.code_version)
CODE_MODULES = ("vlselect.features.activations", "vlselect.features.store", "vlselect.models.encode",
                "vlselect.models.load")
PAPER_DEPTH = 24
LOSS_ARRAYS = ("loss", "perplexity", "el2n")

#: test hook: a batch larger than this raises an out-of-memory error (see tests/test_activations.py)
_TEST_OOM_ABOVE: int | None = None


def default_layers(num_layers: int) -> list[int]:
    """The paper's layers {3, 7, 11, 15, 19} of 24, mapped proportionally to a model with ``num_layers`` layers."""
    if num_layers == PAPER_DEPTH:
        return list(PAPER_LAYERS)
    out: list[int] = []
    for layer in PAPER_LAYERS:
        mapped = min(max(math.floor((layer + 1) * num_layers / PAPER_DEPTH + 0.5) - 1, 0), num_layers - 1)
        if mapped not in out:
            out.append(mapped)
    return out


def parse_layers(spec, num_layers: int) -> list[int]:
    """``None`` → :func:`default_layers`; ``"3,7,11"`` or a list → validated 0-based indices (negative from the end)."""
    if spec is None or spec == "" or spec == "paper":
        return default_layers(num_layers)
    items = [int(x) for x in str(spec).replace(" ", "").split(",")] if isinstance(spec, str) else [int(x) for x in spec]
    out = []
    for x in items:
        y = x + num_layers if x < 0 else x
        if not 0 <= y < num_layers:
            raise ConfigError(f"layer {x} does not exist in a model with {num_layers} decoder layers; fix: pass "
                              f"--layers with values in 0..{num_layers - 1}")
        if y not in out:
            out.append(y)
    return out


def pool_activations(acts: Sequence, image_mask, text_mask):
    """COINCIDE pooling of captured o_proj outputs (spec §1.4).

    Parameters
    ----------
    acts : sequence of torch.Tensor
        One (B, T, H) tensor per layer, in layer order.
    image_mask, text_mask : torch.Tensor
        (B, T) bool.

    Returns
    -------
    torch.Tensor
        (B, 2·L·H) float32: ``[v_1 | u_1 | … | v_L | u_L]`` with each part tanh'd, L2-normalised and ÷ √(2L);
        a part with no positions is all zeros.
    """
    import torch
    import torch.nn.functional as F

    L = len(acts)
    scale = 1.0 / math.sqrt(2 * L)
    parts = []
    im = image_mask.to(acts[0].device, torch.float32)
    tm = text_mask.to(acts[0].device, torch.float32)
    n_im = im.sum(1, keepdim=True)
    n_tm = tm.sum(1, keepdim=True)
    for a in acts:
        a = a.float()
        for mask, n in ((im, n_im), (tm, n_tm)):
            mean = torch.bmm(mask[:, None, :], a)[:, 0] / n.clamp(min=1)
            part = F.normalize(torch.tanh(mean), dim=-1, eps=1e-12) * scale
            parts.append(torch.where(n > 0, part, torch.zeros_like(part)))
    return torch.cat(parts, dim=1)


class _StopForward(Exception):
    pass


def _is_oom(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or "out of memory" in str(exc).lower()


def _base_model(model):
    base = getattr(model, "model", None)
    return base if base is not None and hasattr(base, "forward") else None


def forward_features(loaded, batch: dict, layers: Sequence[int], *, losses: bool = False,
                     embeddings: bool = False) -> dict:
    """One batched forward pass → pooled activations (and per-sample losses).

    Parameters
    ----------
    loaded : LoadedVLM
    batch : dict
        From :func:`vlselect.models.collate`.
    layers : sequence of int
        Decoder layers whose ``self_attn.o_proj`` output is pooled.
    losses : bool
        Also compute ``loss``, ``perplexity``, ``el2n`` (:mod:`vlselect.features.losses`); then the forward runs
        to the end, otherwise it stops after the last probed layer.
    embeddings : bool
        Also compute ``embed_last``, ``embed_mean`` and ``margin`` (:mod:`vlselect.features.embeddings`, the
        SemDeDup / D2-Pruning inputs); the forward runs to the end.

    Returns
    -------
    dict of str to numpy.ndarray
        ``activations`` (B, 2·L·H) float32, ``has_image`` (B,) uint8, and with ``losses`` the three float32 (B,).
    """
    import torch

    if _TEST_OOM_ABOVE is not None and batch["input_ids"].shape[0] > _TEST_OOM_ABOVE:
        raise torch.OutOfMemoryError("simulated out of memory (test hook)")
    model = loaded.model
    dec = loaded.decoder_layers
    captured: dict[int, object] = {}
    last = max(layers)
    handles = []
    full = losses or embeddings  # run to the end: the last hidden state is needed

    def hook_for(idx):
        def hook(_module, _inp, out):
            captured[idx] = out
            if idx == last and not full:
                raise _StopForward

        return hook

    for idx in layers:
        handles.append(dec[idx].self_attn.o_proj.register_forward_hook(hook_for(idx)))
    dev = loaded.device
    inputs = {k: v.to(dev) for k, v in batch.items() if k not in ("labels", "image_mask", "text_mask")}
    if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    out = {}
    try:
        with torch.inference_mode():
            base = _base_model(model)
            try:
                if base is not None:
                    res = base(**inputs, use_cache=False)
                    hidden = res.last_hidden_state if hasattr(res, "last_hidden_state") else res[0]
                else:
                    res = model(**inputs, use_cache=False, output_hidden_states=full)
                    hidden = res.hidden_states[-1] if full else None
            except _StopForward:
                hidden = None
            if losses:
                from vlselect.features.losses import losses_from_hidden

                head = model.get_output_embeddings()
                if base is None:  # full model: logits are there already
                    from vlselect.features.losses import losses_from_logits

                    vals = losses_from_logits(res.logits.float(), batch["labels"].to(dev))
                else:
                    vals = losses_from_hidden(hidden, batch["labels"].to(dev), head)
                for k, v in vals.items():
                    out[k] = v.cpu().numpy().astype(np.float32)
            if embeddings:
                from vlselect.features.embeddings import embedding_arrays

                out.update(embedding_arrays(hidden, inputs["attention_mask"], batch["labels"].to(dev),
                                            model.get_output_embeddings()))
            feats = pool_activations([captured[i] for i in layers], batch["image_mask"], batch["text_mask"])
    finally:
        for h in handles:
            h.remove()
    out["activations"] = feats.cpu().numpy()
    out["has_image"] = batch["image_mask"].any(1).cpu().numpy().astype(np.uint8)
    return out


def forward_with_retry(loaded, encoded: list, layers, *, losses=False, embeddings=False) -> dict:
    """:func:`forward_features` on ``collate(encoded)``; on out-of-memory, halves the batch recursively."""
    from vlselect.models import collate

    try:
        return forward_features(loaded, collate(encoded, loaded.pad_token_id), layers, losses=losses,
                                embeddings=embeddings)
    except Exception as exc:  # noqa: BLE001
        if not _is_oom(exc):
            raise
        if len(encoded) == 1:
            raise ModelError(f"one sample of {int(encoded[0]['input_ids'].shape[0])} tokens does not fit in memory "
                             f"on {loaded.device}; fix: use a device with more memory or a smaller dtype "
                             "(sequences are never truncated)") from exc
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass
        h = len(encoded) // 2
        a = forward_with_retry(loaded, encoded[:h], layers, losses=losses, embeddings=embeddings)
        b = forward_with_retry(loaded, encoded[h:], layers, losses=losses, embeddings=embeddings)
        return {k: np.concatenate([a[k], b[k]]) for k in a}


def array_specs(hidden_size: int, n_layers: int, losses: bool, embeddings: bool = False) -> dict:
    """The store arrays written by the extractor: name → (width, dtype)."""
    specs = {"activations": (2 * n_layers * hidden_size, "float16"), "has_image": (None, "uint8")}
    if losses:
        specs.update({k: (None, "float32") for k in LOSS_ARRAYS})
    if embeddings:
        from vlselect.features.embeddings import EMBEDDING_ARRAYS

        specs.update({k: (hidden_size if w == "hidden" else w, t) for k, (w, t) in EMBEDDING_ARRAYS.items()})
    return specs


class _EncodeRows:
    """A map-style dataset: position j → (j, row, encoding or the PoolError it raised). Holds a model-less copy of
    the LoadedVLM so DataLoader workers never touch the model."""

    def __init__(self, loaded, pool, rows, image_root, max_length):
        import dataclasses

        from vlselect.models.encode import _wants_mm_token_type_ids

        _wants_mm_token_type_ids(loaded)  # resolved once, from the model, before the copy drops it
        self.lite = dataclasses.replace(loaded, model=None, extra=dict(loaded.extra))
        self.pool, self.rows, self.image_root, self.max_length = pool, list(rows), image_root, max_length
        self.as_numpy = False

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, j):
        from vlselect.models import encode_sample
        from vlselect.models.encode_cache import encode_cache

        row = self.rows[j]
        try:
            if self.as_numpy:  # a DataLoader worker: its cache would die with it
                enc = encode_sample(self.lite, self.pool[row], self.image_root, max_length=self.max_length)
            else:  # in-process: later stages of this process (gradients, training) reuse the encoding
                enc = encode_cache().encode(self.lite, self.pool[row], self.image_root, max_length=self.max_length)
        except PoolError as exc:
            return j, row, exc
        if self.as_numpy:  # pickled through the pipe: no shared-memory file descriptor per tensor
            enc = {k: v.numpy() for k, v in enc.items()}
        return j, row, enc


def _encode_rows(loaded, pool, rows, image_root, max_length, workers: int):
    """Encode ``rows`` in order, in this process (``workers=0``) or in ``workers`` DataLoader processes."""
    ds = _EncodeRows(loaded, pool, rows, image_root, max_length)
    if workers <= 0:
        for j in range(len(ds)):
            yield ds[j]
        return
    import torch

    ds.as_numpy = True
    loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers,
                                         collate_fn=_identity, prefetch_factor=8)
    for j, row, enc in loader:
        if isinstance(enc, dict):
            enc = {k: torch.from_numpy(v) for k, v in enc.items()}
        yield j, row, enc


def _identity(x):
    return x


def compute_shard(loaded, pool, rows: range, *, image_root, layers, batch_size: int, losses: bool,
                  skip_bad: bool, hidden_size: int, max_length: int | None = None, on_rows=None, workers: int = 0,
                  embeddings: bool = False):
    """Compute the extractor's arrays for ``rows`` of ``pool`` (whoever chose the rows: datatrove habit).

    Samples are encoded (in ``workers`` DataLoader processes when > 0; the result does not depend on it), sorted by
    (length, row) and run in batches of ``batch_size``; a row whose image is missing or unreadable raises, or with
    ``skip_bad`` is returned in ``missing`` with zero features and NaN losses.

    Returns
    -------
    (dict of str to numpy.ndarray, list of int)
        The arrays for the rows in order, and the absolute indices of the missing rows.
    """
    n = len(rows)
    specs = array_specs(hidden_size, len(layers), losses, embeddings)
    arrays = {}
    for name, (width, dtype) in specs.items():
        shape = (n,) if width is None else (n, width)
        fill = np.nan if name in (*LOSS_ARRAYS, "margin") else 0
        arrays[name] = np.full(shape, fill, dtype=np.float32 if name != "has_image" else np.uint8)
    missing = []
    encoded = []
    for j, row, enc in _encode_rows(loaded, pool, rows, image_root, max_length, workers):
        if isinstance(enc, PoolError):
            if not skip_bad:
                raise enc
            missing.append(row)
            if on_rows:
                on_rows(1)
            continue
        encoded.append((int(enc["input_ids"].shape[0]), j, enc))
    encoded.sort(key=lambda t: (t[0], t[1]))
    for b in range(0, len(encoded), batch_size):
        chunk = encoded[b:b + batch_size]
        res = forward_with_retry(loaded, [c[2] for c in chunk], layers, losses=losses, embeddings=embeddings)
        idx = np.array([c[1] for c in chunk])
        for name in specs:
            arrays[name][idx] = res[name]
        if on_rows:
            on_rows(len(chunk))
    return {k: v.astype(np.dtype(specs[k][1])) for k, v in arrays.items()}, missing


def _open_pool(pool_path, image_root):
    if not isinstance(pool_path, (str, os.PathLike)):  # an opened Pool (the CLI opens it with its options)
        return pool_path
    try:
        from vlselect.pool import open_pool
    except ImportError:
        from vlselect.pool.core import open_pool
    return open_pool(pool_path, image_root=image_root)


def extract_activations(model, pool, out, *, images=None, layers=None, batch_size: int = 8, losses: bool = False,
                        shard: str | None = None, skip_bad: bool = False, shard_size: int = 256, dtype=None,
                        device=None, max_length: int | None = None, progress: bool = True, workers: int = 0,
                        embeddings: bool = False, overwrite: bool = False) -> Path:
    """Extract COINCIDE activations (and, with ``losses``, loss / perplexity / EL2N) for a pool into a store.

    Parameters
    ----------
    model : path-like
        Model directory (:func:`vlselect.models.load_vlm`).
    pool : path-like
        Pool file (:func:`vlselect.pool.open_pool`).
    out : path-like
        The :class:`~vlselect.features.FeatureStore` directory; an unfinished one is resumed.
    images : path-like, optional
        Image folder.
    layers : str or list of int, optional
        Default: the paper's layers mapped to the model's depth (:func:`default_layers`).
    batch_size : int
        8, as the official extraction (spec §1.3).
    losses : bool
        Also write ``loss``, ``perplexity``, ``el2n``.
    shard : str, optional
        ``"i/N"``: compute only shards ``k ≡ i (mod N)`` (SLURM arrays); combined with torchrun's RANK/WORLD_SIZE.
    skip_bad : bool
        Record rows with a missing / unreadable image as missing instead of failing.
    shard_size : int
        Rows per store shard (the unit of resumption).
    workers : int
        Processes that encode samples (chat template, tokenizer, images) while the model runs; 0 = in this
        process. The official extraction uses 4 DataLoader workers.
    embeddings : bool
        Also write ``embed_last``, ``embed_mean`` and ``margin``: SemDeDup's and D2-Pruning's inputs
        (:mod:`vlselect.features.embeddings`) from the same forward pass.
    overwrite : bool
        Recompute into ``out`` even if it holds a store of other inputs (otherwise that is an error naming what
        differs; a store of the same inputs is resumed or reused).

    Returns
    -------
    Path
        ``out``. The store is finalised when every shard is done (by rank 0 under torchrun).

    Examples
    --------
    >>> extract_activations("tiny-llava", "world/pool.json", "feats", images="world/images")  # doctest: +SKIP
    """
    from vlselect.features.store import FeatureStore
    from vlselect.models import load_vlm, resolve_template

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    from vlselect.artifact import code_version
    from vlselect.executor import current

    ex = current(shard)
    device = ex.device(device)
    loaded = load_vlm(model, dtype=dtype, device=device)
    layer_list = parse_layers(layers, loaded.num_layers)
    text_cfg = loaded.model.config.get_text_config()
    hidden = int(text_cfg.hidden_size)
    the_pool = _open_pool(pool, images)
    meta = {
        "kind": "coincide-activations",
        "model": str(Path(model).resolve()),
        "model_hash": loaded.model_hash,
        "family": loaded.family,
        "template": resolve_template(loaded),  # how conversations became text; a resume must use the same
        "layers": layer_list,
        "hidden_size": hidden,
        "module": "self_attn.o_proj",
        "pooling": "mean(image_mask) | mean(text_mask); tanh; l2; /sqrt(2L)",
        "dtype": "float16",
        "losses": bool(losses),
        "embeddings": bool(embeddings),
        "pool": str(Path(the_pool.path).resolve()),
        "pool_fingerprint": the_pool.fingerprint,
        "text_only": "vision half zeros; flagged in has_image",
    }
    if not ex.is_main:
        ex.barrier()  # rank 0 creates (or clears, under --overwrite) the folder first
    store = FeatureStore.create(out, arrays=array_specs(hidden, len(layer_list), losses, embeddings), n_rows=len(the_pool),
                                shard_size=shard_size, meta=meta, sample_ids=the_pool.ids,
                                code=code_version(*CODE_MODULES), overwrite=overwrite and ex.is_main)
    if ex.is_main:
        ex.barrier()
    todo = store.pending(ex.slot, ex.slots)
    kill_after = int(os.environ.get("VLSELECT_TEST_KILL_AFTER_SHARDS", "0") or 0)
    if todo:
        _run_shards(store, todo, loaded, the_pool, images, layer_list, batch_size, losses, skip_bad, hidden,
                    max_length, progress and ex.is_main, kill_after, workers, embeddings)
    ex.barrier()
    if ex.is_main:  # one process per job (torchrun: its rank 0) tries; finalise needs every shard done
        done = store.finalise()
        if not done and progress:
            from rich.console import Console

            Console(stderr=True).print(f"{len(store.done_shards())}/{store.n_shards} shards done in {out}; the "
                                       "store is finalised when the other --shard jobs finish (or run "
                                       "'vlselect features merge')")
    ex.barrier()
    store.close()
    return Path(out)


def _run_shards(store, todo, loaded, pool, images, layers, batch_size, losses, skip_bad, hidden, max_length,
                show, kill_after, workers=0, embeddings=False):
    from vlselect.progress import progress_bar

    total = sum(len(s) for s in todo)
    with progress_bar("activations", enabled=show, unit="rows") as prog:
        task = prog.add_task("", total=total)

        def advance(k):
            prog.advance(task, k)

        for written, shard in enumerate(todo, start=1):
            arrays, missing = compute_shard(loaded, pool, range(shard.start, shard.stop), image_root=images,
                                            layers=layers, batch_size=batch_size, losses=losses, skip_bad=skip_bad,
                                            hidden_size=hidden, max_length=max_length, on_rows=advance,
                                            workers=workers, embeddings=embeddings)
            store.write_shard(shard.index, arrays, missing)
            if kill_after and written >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)


def check_store(path) -> dict:
    """A summary of a store for ``vlselect features info``: manifest fields and array shapes."""
    from vlselect.features.store import FeatureStore

    st = FeatureStore.open(path)
    m = dict(st.manifest)
    m.pop("missing_rows", None)
    return m


__all__ = ["PAPER_LAYERS", "FeatureError", "array_specs", "check_store", "compute_shard", "default_layers",
           "extract_activations", "forward_features", "forward_with_retry", "parse_layers", "pool_activations"]
