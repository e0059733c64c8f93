"""Running a model on evaluation sets: batched greedy generation, per-set scores, per-sample predictions, relative
performance against a reference, and mean ± 95% interval over several result files (seeds).

Output folder
-------------
``results.json``
    ``{"model": ..., "sets": {name: {"metric", "score", "n", ...}}, "mean_score": ..., "relative": ...?}``.
``predictions/{set}.jsonl``
    One line per sample: ``{"id", "question", "prediction", "answers", "score"}``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from vlselect.errors import ConfigError
from vlselect.evaluate.metrics import mean_interval, percent_mean, relative_performance, score_sample, score_set
from vlselect.evaluate.references import reference_scores
from vlselect.evaluate.sets import EvalSet, read_eval_set, read_results, scores_of


def _atomic_write(path: Path, text: str) -> None:
    from vlselect.artifact import atomic_write_text

    atomic_write_text(path, text)


def _weights_hash(folder) -> str | None:
    """The hash of a model / adapter folder's weights (so a retrained model at the same path is not reused)."""
    from vlselect.errors import ModelError
    from vlselect.models.load import model_hash

    try:
        return model_hash(folder)
    except (ModelError, OSError):
        return None  # not a folder of weights: loading it reports the problem


def generate_answers(loaded, questions: Sequence[str], images: Sequence[str | None], image_root, *,
                     batch_size: int = 8, max_new_tokens: int = 32, progress=None) -> list[str]:
    """Greedy answers of ``loaded`` (a :class:`~vlselect.models.LoadedVLM`) to questions with optional images.

    Prompts and images go through the same functions as training and feature extraction
    (:func:`vlselect.models.generation_prompt`: the training template up to the assistant turn;
    :func:`vlselect.models.model_image`: decoded, padded to a square for LLaVA); batches are left-padded and
    grouped by whether they have an image. MMA models (``loaded.extra["mma"]``) are routed by the modality of each
    batch. Each batch's encoding (prompts, processed pictures) is kept in the process's encode cache
    (:mod:`vlselect.models.encode_cache`, keyed by the processor's files, the prompts and the image files), so a
    process that evaluates many models on the same sets (the bench's workers) encodes each batch once.
    """
    import torch

    from vlselect.models import generation_prompt, model_image
    from vlselect.models.encode_cache import encode_cache, file_stats
    from vlselect.train.mma import mma_routing

    cache = encode_cache()

    processor = loaded.processor
    tok = processor.tokenizer
    old_side = tok.padding_side
    tok.padding_side = "left"
    model = loaded.model
    model.eval()
    out: list[str | None] = [None] * len(questions)
    order = sorted(range(len(questions)), key=lambda i: (images[i] is None, i))
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            has = images[chunk[0]] is not None
            chunk = [i for i in chunk if (images[i] is not None) == has]
            rest = [i for i in order[start : start + batch_size] if i not in chunk]
            for group in (chunk, rest):
                if not group:
                    continue
                g_has = images[group[0]] is not None
                texts = [generation_prompt(loaded, questions[i], n_images=1 if g_has else 0) for i in group]
                paths = [Path(image_root) / images[i] for i in group] if g_has else []

                def encode_batch(texts=texts, paths=paths) -> dict:
                    kwargs = {"text": texts, "return_tensors": "pt", "padding": True}
                    if paths:
                        kwargs["images"] = [model_image(loaded, p) for p in paths]
                    return dict(processor(**kwargs))

                # the same batch of the same evaluation set is encoded once per process (the bench evaluates
                # every run of a worker on the same sets): keyed by the processor, the prompts and the image files
                key = ("generate", cache.model_key(loaded), tuple(texts), file_stats(paths))
                enc = cache.lookup(key, encode_batch)
                enc = {k: v.to(loaded.device) if hasattr(v, "to") else v for k, v in enc.items()}
                routing = mma_routing(model, [1 if g_has else 0] * len(group)) if loaded.extra.get("mma") else None
                with torch.no_grad():
                    if routing is not None:
                        with routing:
                            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                                 pad_token_id=loaded.pad_token_id)
                    else:
                        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                             pad_token_id=loaded.pad_token_id)
                new = gen[:, enc["input_ids"].shape[1] :]
                for i, row in zip(group, new):
                    out[i] = tok.decode(row, skip_special_tokens=True).strip()
            if progress is not None:
                progress(len(chunk) + len(rest))
    finally:
        tok.padding_side = old_side
    return [o or "" for o in out]


def _reuse(out: Path, es: EvalSet, state: dict) -> list[str] | None:
    """Predictions of a set finished by an earlier call with the same model and options, else None."""
    pf, sf = out / "predictions" / f"{es.name}.jsonl", out / "eval_state.json"
    if not (pf.is_file() and sf.is_file()) or json.loads(sf.read_text()) != state:
        return None
    rows = [json.loads(x) for x in pf.read_text().splitlines() if x.strip()]
    if [r.get("id") for r in rows] != [s["id"] for s in es.samples]:
        return None
    return [r["prediction"] for r in rows]


def evaluate(model_dir, eval_files: Sequence, image_root, out_dir, *, adapter=None, reference=None,
             batch_size: int = 8, max_new_tokens: int = 32, resume: bool = True, progress: bool = True,
             device=None, template=None, overwrite: bool = False) -> dict:
    """Evaluate a model on evaluation sets and write ``results.json`` and per-sample predictions.

    Parameters
    ----------
    model_dir : path-like
        Base or merged model, or an MMA ``final/`` folder (see :func:`vlselect.train.load_trained`).
    eval_files : sequence of path-like
        Evaluation-set files (format in :mod:`vlselect.evaluate.sets`).
    image_root : path-like
        Folder the sets' image paths are relative to.
    out_dir : path-like
    adapter : path-like, optional
        LoRA adapter or MMA folder to apply to ``model_dir``.
    reference : path-like or str, optional
        A reference ``results.json`` (e.g. the full-pool run) or a pinned name
        (:data:`vlselect.evaluate.references.PINNED`); adds ``relative`` (survey §1.2, §1.6).
    batch_size, max_new_tokens : int
        Generation batch (8) and length (32).
    resume : bool
        Reuse the predictions of sets already finished in ``out_dir`` by a call with the same model, adapter,
        ``max_new_tokens`` and template (sets are saved one by one as they finish).
    template : str or path, optional
        The prompt template (:func:`vlselect.models.encode_sample`); default ``$VLSELECT_TEMPLATE``, else the
        model's default: the same as training used.
    overwrite : bool
        Evaluate again from scratch whatever ``out_dir`` holds (same as ``resume=False``).

    Returns
    -------
    dict
        The results object written to ``results.json``.
    """
    if not eval_files:
        raise ConfigError("no evaluation sets given; pass one or more --eval FILE")
    sets: list[EvalSet] = [read_eval_set(f) for f in eval_files]
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"two evaluation sets are named {dup!r}; each --eval file needs its own 'name'")
    ref = reference_scores(reference) if reference is not None else None
    out = Path(out_dir)
    from vlselect.models.encode import TEMPLATE_ENV

    chosen = template if template is not None else os.environ.get(TEMPLATE_ENV)  # None: the model's default
    state = {"model": str(Path(model_dir).resolve()), "adapter": None if adapter is None else str(Path(adapter).resolve()),
             "max_new_tokens": max_new_tokens, "template": None if chosen is None else str(chosen),
             "model_hash": _weights_hash(model_dir),
             "adapter_hash": None if adapter is None else _weights_hash(adapter)}
    created = not out.exists()
    try:
        return _evaluate_locked(model_dir, sets, image_root, out, state, ref, reference, adapter=adapter,
                                batch_size=batch_size, max_new_tokens=max_new_tokens, resume=resume and not overwrite,
                                progress=progress, device=device, chosen=chosen)
    except BaseException:
        if created and out.is_dir() and all(p.name.startswith(".vlselect") for p in out.iterdir()):
            import shutil

            shutil.rmtree(out, ignore_errors=True)  # a failed first evaluation leaves no empty folder
        raise


def _evaluate_locked(model_dir, sets, image_root, out: Path, state: dict, ref, reference, *, adapter, batch_size,
                     max_new_tokens, resume, progress, device, chosen) -> dict:
    from vlselect.artifact import FolderLock, describe_difference, mismatch_error

    with FolderLock(out, exclusive=True):  # one evaluation writes a folder at a time
        sf = out / "eval_state.json"
        if resume and sf.is_file():
            try:
                old = json.loads(sf.read_text())
            except ValueError as exc:
                raise ConfigError(f"{sf} is corrupt ({exc}); fix: pass --overwrite, or another --out") from None
            if old != state:
                raise mismatch_error(out, describe_difference(old, state))
        return _evaluate(model_dir, sets, image_root, out, state, ref, reference, adapter=adapter,
                         batch_size=batch_size, max_new_tokens=max_new_tokens, resume=resume, progress=progress,
                         device=device, chosen=chosen)


def _evaluate(model_dir, sets, image_root, out: Path, state: dict, ref, reference, *, adapter, batch_size,
              max_new_tokens, resume, progress, device, chosen) -> dict:
    from vlselect.models.encode import resolve_template
    from vlselect.progress import progress_bar
    from vlselect.train.load import load_trained

    reused = {es.name: _reuse(out, es, state) for es in sets} if resume else {}
    for es in sets:  # predictions of another model / options must never be picked up by a later resume
        if reused.get(es.name) is None:
            (out / "predictions" / f"{es.name}.jsonl").unlink(missing_ok=True)
    loaded = None if all(v is not None for v in reused.values()) and reused else \
        load_trained(model_dir, adapter=adapter, device=device)
    if loaded is not None and chosen is not None:
        loaded.extra["template"] = resolve_template(loaded, chosen)
    _atomic_write(out / "eval_state.json", json.dumps(state) + "\n")
    results = {"model": str(model_dir), "adapter": None if adapter is None else str(adapter), "sets": {}}
    total = sum(len(s.samples) for s in sets)
    with progress_bar("eval", enabled=progress, unit="samples") as bar:
        task = bar.add_task("", total=total)
        for es in sets:
            bar.update(task, description=es.name)
            preds = reused.get(es.name)
            if preds is None:
                preds = generate_answers(
                    loaded, [s["question"] for s in es.samples], [s.get("image") for s in es.samples], image_root,
                    batch_size=batch_size, max_new_tokens=max_new_tokens, progress=lambda k: bar.advance(task, k))
            else:
                bar.advance(task, len(es.samples))
            scored = score_set(es.metric, preds, es.samples)
            results["sets"][es.name] = {"metric": es.metric, "n": len(es.samples), **scored}
            lines = []
            for s, p in zip(es.samples, preds):
                rec = {"id": s["id"], "question": s["question"], "prediction": p,
                       "answers": s.get("answers"), "score": score_sample(es.metric, p, s)}
                if es.metric == "iou":
                    rec["box"] = s["box"]
                lines.append(json.dumps(rec, ensure_ascii=False))
            if reused.get(es.name) is None:
                _atomic_write(out / "predictions" / f"{es.name}.jsonl", "\n".join(lines) + "\n")
    scores = scores_of(results)
    results["mean_score"] = sum(scores.values()) / len(scores)
    if ref is not None:
        rel = relative_performance(scores, ref[0], source=ref[1])
        results["reference"] = str(reference)
        results["relative"] = rel["relative"]
        results["relative_skipped"] = rel["skipped"]  # sets with a zero reference score (no ratio)
        for name, v in rel["per_set"].items():
            results["sets"][name]["relative"] = v
    _atomic_write(out / "results.json", json.dumps(results, indent=2) + "\n")
    return results


def summarize(result_files: Sequence, *, reference=None, confidence: float = 0.95) -> dict:
    """Mean and t-interval over several ``results.json`` (e.g. one per training seed).

    Returns ``{"n", "sets": {name: interval}, "mean_score": interval, "relative": interval?}`` where each interval
    is the dict of :func:`vlselect.evaluate.metrics.mean_interval`. Every file must hold the same sets.
    """
    if not result_files:
        raise ConfigError("no result files to summarise")
    runs = [read_results(f) for f in result_files]
    names = list(runs[0]["sets"])
    for f, r in zip(result_files, runs):
        if sorted(r["sets"]) != sorted(names):
            raise ConfigError(f"{f}: evaluation sets {sorted(r['sets'])} differ from {sorted(names)} in "
                              f"{result_files[0]}; summarise runs evaluated on the same sets")
    ref_scores = reference_scores(reference)[0] if reference is not None else None
    out = {"n": len(runs), "files": [str(f) for f in result_files], "sets": {}}
    for name in names:
        out["sets"][name] = mean_interval([r["sets"][name]["score"] for r in runs], confidence)
    means = [percent_mean(r["sets"]) for r in runs]  # points-scale sets (MME) are reported apart, never averaged
    out["mean_score"] = None if means[0][0] is None else mean_interval([m for m, _ in means], confidence)
    out["mean_excludes"] = means[0][1]
    if ref_scores is not None:
        rels = [relative_performance(scores_of(r), ref_scores, source=str(reference))["relative"] for r in runs]
        out["relative"] = mean_interval(rels, confidence)
        out["reference"] = str(reference)
    elif all("relative" in r for r in runs):
        out["relative"] = mean_interval([r["relative"] for r in runs], confidence)
    return out
