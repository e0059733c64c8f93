"""Building the world's foundation from its recipe (:mod:`vlselect.models.foundation` describes the stages)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from vlselect.errors import ConfigError
from vlselect.models.foundation import MARKER, FoundationRecipe


def build_foundation(out_dir: str | os.PathLike, recipe: FoundationRecipe | None = None, *,
                     work_dir: str | os.PathLike | None = None, progress: bool = True,
                     log: Callable[[str], None] = print) -> Path:
    """Build a foundation into ``out_dir`` (see the module docstring) and return ``out_dir``.

    ``work_dir`` keeps the stage pools and runs (default ``out_dir/../.<name>-work``), in a subfolder named by a
    hash of the recipe; a build of the same recipe started again resumes from the stages (and training
    checkpoints) already there, and another recipe starts in its own subfolder. Deterministic in the recipe on one machine (single-process CPU training).
    """
    from vlselect.models.load import model_hash
    from vlselect.models.tiny import build_tiny
    from vlselect.train import train_lora
    from vlselect.world.make import make_pretrain_pool, make_text_pool

    rc = recipe or FoundationRecipe()
    if rc.family != "llava":
        raise ConfigError(f"foundation family {rc.family!r}: only llava is built so far")
    out = Path(out_dir)
    from vlselect.artifact import digest

    # stage pools and runs are reused by folder, so the folder is named by the whole recipe: another recipe never
    # picks up this one's pools (a pool folder is reused on its existence alone)
    root = Path(work_dir) if work_dir is not None else out.parent / f".{out.name}-work"
    work = root / digest(rc.to_json()).split(":", 1)[1][:16]
    work.mkdir(parents=True, exist_ok=True)

    def world(name: str, fn: Callable[[Path], Any]) -> Path:
        d = work / name
        if not (d / "world.json").exists():
            fn(d)
        return d

    text = world("text-pool", lambda d: make_text_pool(d, size=rc.text_size, seed=rc.seed + 11,
                                                       image_size=rc.image_size, avoid=rc.avoid,
                                                       answer_style=rc.answer_style,
                                                       format_share=rc.format_share,
                                                       short_kinds=rc.short_kinds))
    caps_v = world("vision-pool", lambda d: make_pretrain_pool(d, size=rc.vision_size, seed=rc.seed + 13,
                                                               image_size=rc.image_size, avoid=rc.avoid,
                                                               counted=rc.counted_captions,
                                                               word_share=rc.vision_word_share))
    caps_a = world("align-pool", lambda d: make_pretrain_pool(d, size=rc.align_size, seed=rc.seed + 17,
                                                              image_size=rc.image_size, avoid=rc.avoid,
                                                              counted=rc.counted_captions,
                                                              lookup_share=rc.align_lookup_share,
                                                              lookup_kinds=rc.align_lookup_kinds,
                                                              word_share=rc.align_word_share))
    if rc.instruct_size:
        from vlselect.world.make import ALIGN_KINDS

        instr = world("instruct-pool", lambda d: make_pretrain_pool(
            d, size=rc.instruct_size, seed=rc.seed + 29, image_size=rc.image_size, avoid=rc.avoid,
            counted=rc.counted_captions, lookup_share=rc.instruct_share, lookup_kinds=ALIGN_KINDS,
            answer_style="sentence", short_kinds=rc.instruct_short_kinds, word_share=rc.instruct_word_share))
    init = work / "init"
    if not (init / "vlselect_tiny.json").exists():
        build_tiny(init, rc.family, seed=rc.seed, size=rc.size, image_size=rc.image_size)
    common = dict(epochs=1, batch_size=rc.batch_size, seed=rc.seed, gradient_checkpointing=False,
                  progress=progress, warmup_ratio=0.03)

    start, lookup = init, None
    n_stages = 4 if rc.instruct_size else 3
    if rc.lookup_steps > 0:
        log(f"foundation 0/{n_stages}: the language model looks things up ({rc.lookup_steps} steps of compact lookup rows)")
        lookup = lookup_warmup(init, work / "lookup", steps=rc.lookup_steps, lr=rc.text_lr, seed=rc.seed,
                               batch_size=rc.batch_size, image_size=rc.image_size, avoid=rc.avoid, progress=progress,
                               plain_steps=rc.lookup_plain_steps, chat_steps=rc.lookup_chat_steps,
                               kinds=rc.lookup_kinds)
        start = lookup["dir"]
    log(f"foundation 1/{n_stages}: the language model on text")
    lang = train_lora(start, text / "pool.json", None, work / "language", adapter="full", lr=rc.text_lr,
                      projector_lr=rc.text_lr, **common)
    log(f"foundation 2/{n_stages}: the vision tower by captioning (the language model keeps reading text)")
    mixed = _mixed_pool(work / "vision-mix", caps_v / "pool.json", text / "pool.json", rc.vision_text_size, rc.seed)
    vis = train_lora(lang.final_dir, mixed, caps_v / "images", work / "vision", adapter="full",
                     lr=rc.vision_lr, projector_lr=rc.vision_lr, modules_to_save=["vision_tower"],
                     **{**common, "epochs": rc.vision_epochs})
    log(f"foundation 3/{n_stages}: the projector aligned on captions (vision tower and language model frozen)"
        + (f", {rc.align_lookup_share:.0%} of its pictures asked {' / '.join(rc.align_lookup_kinds)}"
           if rc.align_lookup_share else ""))
    align = train_lora(vis.final_dir, caps_a / "pool.json", caps_a / "images", work / "align", adapter="projector",
                       lr=rc.align_lr, projector_lr=rc.align_lr, **common)
    instruct = None
    if rc.instruct_size:
        log(f"foundation 4/{n_stages}: the language model and projector on the world's questions over pictures, answered in "
            "sentences but for " + ", ".join(rc.instruct_short_kinds) + " (vision tower frozen)")
        instruct = train_lora(align.final_dir, instr / "pool.json", instr / "images", work / "instruct",
                              adapter="full", lr=rc.instruct_lr, projector_lr=rc.instruct_lr, **common)

    return _finish(out, rc, lang, vis, align, lookup, instruct)


def lookup_warmup(init: str | os.PathLike, out_dir: str | os.PathLike, *, steps: int, lr: float, seed: int,
                  batch_size: int = 32, image_size: int = 24, avoid: tuple[tuple[int, int], ...] = ((0, 200),),
                  progress: bool = True, plain_steps: int = 0, chat_steps: int = 0,
                  kinds: tuple[str, ...] = ("color_of_shape",)) -> dict[str, Any]:
    """Teach the language model of the LLaVA model in ``init`` to look a thing up, before stage 1: ``steps`` steps
    of ``batch_size`` raw-text rows of :func:`vlselect.world.make.lookup_rows` (a compact description, then the
    shape asked for, the answer its colour; no chat template, so the query is the last token before the answer),
    loss on the answer, the language model and its head trained in full (AdamW, weight decay 0, lr ``lr`` after 100
    linear warm-up steps, gradients clipped at 1), each row once. Measured (benchmarks/recall_lr.py): the bench's
    4-layer language model learns this in a few hundred steps at lr 1e-4 (never at 1e-3), and then the colour
    of a shape from the world's full descriptions and questions, which it does not learn without it.

    Writes the whole model to ``out_dir`` (a model directory; ``done.json`` records the parameters and the
    losses) and returns ``{"dir", "losses"}``; a ``done.json`` of the same parameters is reused, another one
    refused. Deterministic in the parameters on one machine (one process, CPU).

    ``plain_steps`` then ``chat_steps`` more steps follow on the world's colour-of-a-shape question asked plainly
    and then as the bench asks it (``lookup_rows(style="plain" | "chat")``): the curriculum on the query's distance
    that teaches the bench's own prompt in text (benchmarks/recall_lr.py). ``kinds``: the question kinds the rows
    ask (``lookup_rows(kinds=...)``; default the colour of a shape alone)."""
    import torch
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from vlselect.artifact import atomic_write_json, replace_dir
    from vlselect.errors import ModelError
    from vlselect.models.load import model_hash
    from vlselect.progress import progress_bar
    from vlselect.world.make import lookup_rows

    out = Path(out_dir)
    params = {"steps": int(steps), "lr": float(lr), "seed": int(seed), "batch_size": int(batch_size),
              "image_size": int(image_size), "avoid": [list(a) for a in avoid], "init": model_hash(init)}
    if plain_steps or chat_steps:  # only then: the parameters of a lookup-only warm-up stay as they were
        params.update(plain_steps=int(plain_steps), chat_steps=int(chat_steps))
    if tuple(kinds) != ("color_of_shape",):  # likewise
        params["kinds"] = list(kinds)
    done = out / "done.json"
    if done.exists():
        info = json.loads(done.read_text())
        if info["params"] != params:
            raise ModelError(f"{out}: a lookup warm-up of other parameters ({info['params']}) is there; delete it "
                             "or use another work folder")
        return {"dir": out, "losses": info["losses"]}
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration.from_pretrained(init, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(init)
    lm, head = model.model.language_model, model.lm_head
    params_t = list(lm.parameters()) + list(head.parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params_t:
        p.requires_grad_(True)
    def as_asked(style: str, q: str) -> str:  # the chat rows as the bench's training renders a text-only turn
        if style != "chat":
            return q
        return tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)

    rows = [(as_asked(style, q), a) for style, k in (("lookup", steps), ("plain", plain_steps), ("chat", chat_steps))
            if k for q, a in lookup_rows(k * batch_size, seed=seed + 19, image_size=image_size, avoid=tuple(avoid),
                                         style=style, kinds=tuple(kinds))]
    steps = steps + plain_steps + chat_steps
    enc = [(tok(q, add_special_tokens=False)["input_ids"],
            tok(f" {a}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]) for q, a in rows]
    opt = torch.optim.AdamW(params_t, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / 100))
    losses: list[float] = []
    lm.train()
    with progress_bar("lookup", enabled=progress, unit="steps") as bar:
        task = bar.add_task("", total=steps)
        for k in range(steps):
            chunk = enc[k * batch_size:(k + 1) * batch_size]
            L = max(len(p) + len(a) for p, a in chunk)
            ids = torch.full((len(chunk), L), tok.pad_token_id)
            labels = torch.full((len(chunk), L), -100)
            mask = torch.zeros((len(chunk), L), dtype=torch.long)
            for i, (p, a) in enumerate(chunk):
                ids[i, :len(p) + len(a)] = torch.tensor(p + a)
                labels[i, len(p):len(p) + len(a)] = torch.tensor(a)
                mask[i, :len(p) + len(a)] = 1
            hidden = lm(input_ids=ids, attention_mask=mask).last_hidden_state
            logits = head(hidden[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                                     ignore_index=-100)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params_t, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            losses.append(float(loss.detach()))
            bar.update(task, advance=1, description=f"loss {losses[-1]:.4f}")
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(init, tmp, ignore=shutil.ignore_patterns("*.safetensors", "done.json", ".*"))
    model.save_pretrained(tmp)
    atomic_write_json(tmp / "done.json", {"params": params, "losses": losses})
    replace_dir(tmp, out)
    return {"dir": out, "losses": losses}


def _mixed_pool(d: Path, captions: Path, text: Path, n_text: int, seed: int) -> Path:
    """A pool of every caption record and the first ``n_text`` records of the text pool, in a seeded order
    (``d/pool.json``; images relative to the caption pool's folder). Written once."""
    p = d / "pool.json"
    if p.exists():
        return p
    import numpy as np

    from vlselect.artifact import atomic_write_text

    caps = json.loads(captions.read_text())
    txt = json.loads(text.read_text())
    if n_text > len(txt):
        raise ConfigError(f"foundation: vision_text_size={n_text} exceeds the text pool's {len(txt)} records")
    recs = caps + txt[:n_text]
    order = np.random.default_rng([seed, 2]).permutation(len(recs))
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, "[\n" + ",\n".join(json.dumps(recs[int(i)], ensure_ascii=False) for i in order) + "\n]\n")
    return p


def _finish(out: Path, rc: FoundationRecipe, lang, vis, align, lookup: dict | None = None, instruct=None) -> Path:
    """Copy the last stage's model into ``out`` with its marker (recipe, fingerprint, stage losses), atomically."""
    from vlselect.models.load import model_hash

    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for p in Path((instruct or align).final_dir).iterdir():
        if p.name in ("vlselect_adapter.json", "done.json", "train_result.json") or p.name.startswith("."):
            continue
        shutil.copy2(p, tmp / p.name)

    def losses(res) -> dict[str, float | None]:
        ls = res.losses
        k = max(1, len(ls) // 20)  # first and last 5% of steps
        return {"first": round(sum(ls[:k]) / k, 4) if ls else None,
                "last": round(sum(ls[-k:]) / k, 4) if ls else None, "steps": len(ls)}

    from vlselect.artifact import atomic_write_json, replace_dir

    stages = {"language": losses(lang), "vision": losses(vis), "align": losses(align)}
    if instruct is not None:  # only recipes with stage 4
        stages["instruct"] = losses(instruct)
    if lookup is not None:  # only recipes with the warm-up: the shipped marker stays as it was
        ls = lookup["losses"]
        k = max(1, len(ls) // 20)
        stages = {"lookup": {"first": round(sum(ls[:k]) / k, 4), "last": round(sum(ls[-k:]) / k, 4),
                             "steps": len(ls)}, **stages}
    info = {"format": "vlselect-foundation/1", "recipe": rc.to_json(), "fingerprint": model_hash(tmp),
            "stages": stages,
            "command": "vlselect models foundation DIR"}
    atomic_write_json(tmp / MARKER, info, indent=1, sort_keys=False)
    (tmp / ".vlselect_model_hash.json").unlink(missing_ok=True)
    if out.exists():
        shutil.rmtree(out)
    replace_dir(tmp, out)
    return out
