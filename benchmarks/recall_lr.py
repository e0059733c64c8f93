"""Can the bench's language model learn to look a thing up, and what stops it? Associative recall against the lr.

Issue 12's probes (benchmarks/RESULTS.md, "Twice the pixels, twice the layers") found that the bench's language
model names *a* colour of the picture or of a description without finding the object asked for: it answers the
colour of a shape as often right as naming the colour of a random object would be. Finding the object a question
names is associative recall (an induction-style lookup). This script trains the language model alone, with the
same shape as the bench's (``LlamaForCausalLM``: hidden 128, 4 layers, 4 heads, MLP 256, read from the shipped
foundation's config), on recall and prints how its accuracy grows with the steps at several learning rates:

``--task tokens``: the smallest recall task, from a model of random weights: 2-4 (colour, shape) token pairs with
distinct shapes, a query token, a shape of them; the answer is its colour (8 colours, 5 shapes, 40 token ids; no
tokenizer). ``--task text``: the world's own question, text only: a scene's description (the captions of the
world: "A large red square at the left and a small blue circle at the top.") then "What color is the circle?"
(the shape of exactly one object; the world's phrasings for training, the canonical one held out), answer tokens
only in the loss; ``--init scratch`` (random weights, the world's tokenizer) or ``foundation`` (the shipped
foundation's language model after its three stages).

Beside each curve: the random-object answer (the expected accuracy of naming the colour of an object of the
sequence drawn at random, computed on the held-out rows), which is what a model that sees the palette but looks
nothing up scores.

Recipe: AdamW (weight decay 0), batch 32, 100 warm-up steps then a constant lr, gradients clipped at 1, one
thread, the seed's own training rows (tokens: drawn afresh each step; text: 40,000 records drawn with
replacement); 500 held-out rows; greedy answer of the first answer token(s).

    python benchmarks/recall_lr.py --task tokens --lr 1e-3 3e-4 1e-4 --steps 3000
    python benchmarks/recall_lr.py --task text --init foundation --lr 1e-3 3e-4 --steps 4000
    python benchmarks/recall_lr.py --task tokens --filler 4 --compact-first 1000 --lr 3e-4 1e-4
    python benchmarks/recall_lr.py --task text --compact-first 1500 --compact-style lookup --lr 1e-4 [--chat]
    python benchmarks/recall_lr.py --table results/recall-2026-12-05/tokens.json     # reprint saved curves

``--between``/``--filler`` (tokens) put other tokens after each pair / between the query and the answer;
``--compact-first N`` trains N steps on compact rows first (a curriculum); ``--chat`` (text) asks the question as
the bench does, with its format line in the chat template. Results of 2026-12-05: benchmarks/RESULTS.md, "The
language model can look things up".
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

N_COLOURS, N_SHAPES = 8, 5
COLOURS = tuple(range(4, 4 + N_COLOURS))  # token ids; 0 pad, 1 bos, 2 eos, 3 the query mark
SHAPES = tuple(range(4 + N_COLOURS, 4 + N_COLOURS + N_SHAPES))
QUERY = 3
OTHER = tuple(range(4 + N_COLOURS + N_SHAPES, 4 + N_COLOURS + N_SHAPES + 9))  # "position words"
FILL = 4 + N_COLOURS + N_SHAPES + 9  # a token after the query ("Answer:")
VOCAB = FILL + 1


def recall_row(rng: np.random.Generator, between: int = 0, filler: int = 0) -> tuple[list[int], int]:
    """One row of the token task: ``([c1, s1, c2, s2, ..., QUERY, s_k], c_k)``, 2-4 pairs, shapes distinct.

    ``between``: that many random other tokens after each pair (as a description's position words);
    ``filler``: that many ``FILL`` tokens after the queried shape (the answer no longer follows the query)."""
    n = int(rng.integers(2, 5))
    shapes = rng.choice(SHAPES, n, replace=False)
    cols = rng.choice(COLOURS, n)
    k = int(rng.integers(0, n))
    seq: list[int] = []
    for c, s in zip(cols, shapes):
        seq += [int(c), int(s)] + [int(t) for t in rng.choice(OTHER, between)]
    return seq + [QUERY, int(shapes[k])] + [FILL] * filler, int(cols[k])


def recall_answer(seq: list[int]) -> int:
    """The right answer of a token-task row, by reading it: the colour right before the queried shape."""
    q = seq[seq.index(QUERY) + 1]
    head = seq[:seq.index(QUERY)]
    return next(head[i - 1] for i in range(1, len(head)) if head[i] == q)


def random_object_tokens(seq: list[int], answer: int) -> float:
    """Expected accuracy of naming the colour of one of the row's objects drawn at random."""
    cols = [t for t in seq[:seq.index(QUERY)] if t in COLOURS]
    return sum(c == answer for c in cols) / len(cols)


def random_object_text(description: str, answer: str) -> float:
    """Expected accuracy of naming the colour of one of the description's objects drawn at random."""
    import re

    from vlselect.world.vocab import COLOR_NAMES

    cols = [w for w in re.findall(r"[a-z]+", description.lower()) if w in COLOR_NAMES]
    return sum(c == answer for c in cols) / len(cols)


def text_rows(rng: np.random.Generator, n: int, canonical: bool, compact: str | None = None,
              chat: bool = False) -> list[tuple[str, str, str]]:
    """``(description, prompt, answer)`` of the world's colour-of-a-shape question, text only: the prompt is the
    question then " Answer:". ``compact="description"``: the description of
    :func:`vlselect.world.tasks.compact_caption` ("Red square, blue circle.") instead of the
    world's caption; ``compact="lookup"``: that description and the shape alone as the prompt (the query right
    before the answer, as in the token task). ``chat``: the question as the world's pool and the bench ask it, with
    its format line, in the tiny LLaVA's chat template ("USER: <description>\\n<question>\\nAnswer the question
    using a single word or phrase. ASSISTANT:"): the query about fifteen tokens before the answer."""
    from vlselect.world.scene import sample_scene
    from vlselect.world.tasks import ask_color_of_shape, caption_text
    from vlselect.world.tasks import compact_caption as compact_text

    rows = []
    while len(rows) < n:
        scene = sample_scene(rng)
        qa = ask_color_of_shape(scene, rng, canonical=canonical)
        if qa is not None:
            q = qa.prompt.split("\n")[0]
            if compact == "lookup":
                shape = next(o.shape for o in scene.objects if o.cell == qa.extra["target"])
                rows.append((compact_text(scene), shape, qa.answer))
            else:
                d = compact_text(scene) if compact else caption_text(scene)
                rows.append((f"USER: {d}", f"{qa.prompt} ASSISTANT:", qa.answer) if chat else (d, f"{q} Answer:", qa.answer))
    return rows


def _llama(init: str, vocab: int | None):
    """The bench's language-model shape: random weights, or the shipped foundation's language model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from vlselect.models.foundation import foundation_path

    p = Path(foundation_path())
    tc = {k: v for k, v in json.loads((p / "config.json").read_text())["text_config"].items() if k != "model_type"}
    if vocab is not None:  # the token task: its own 40 ids
        tc.update(vocab_size=vocab, pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=64)
    model = LlamaForCausalLM(LlamaConfig(**tc))
    if init == "foundation":
        from transformers import LlavaForConditionalGeneration

        full = LlavaForConditionalGeneration.from_pretrained(p)
        model.model.load_state_dict(full.model.language_model.state_dict())
        model.lm_head.load_state_dict(full.lm_head.state_dict())
    return model


def _collate(rows: list[tuple[list[int], list[int]]], pad: int):
    """(prompt ids, answer ids) rows -> input ids, labels (answer only), attention mask; right padding."""
    import torch

    L = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), L), pad)
    labels = torch.full((len(rows), L), -100)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        x = p + a
        ids[i, :len(x)] = torch.tensor(x)
        labels[i, len(p):len(x)] = torch.tensor(a)
        mask[i, :len(x)] = 1
    return ids, labels, mask


def accuracy(model, rows: list[tuple[list[int], list[int]]], pad: int, batch: int = 100) -> float:
    """Share of rows whose answer tokens (eos excluded) are all the greedy next-token predictions."""
    import torch

    model.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            chunk = rows[i:i + batch]
            ids, _, mask = _collate(chunk, pad)
            logits = model(input_ids=ids, attention_mask=mask).logits
            for j, (p, a) in enumerate(chunk):
                ans = a[:-1] if len(a) > 1 else a  # the answer without its eos
                pred = logits[j, len(p) - 1:len(p) - 1 + len(ans)].argmax(-1).tolist()
                right += pred == ans
    model.train()
    return right / len(rows)


def curve(task: str, init: str, lr: float, steps: int, every: int, seed: int, between: int = 0,
          filler: int = 0, compact_first: int = 0, compact_style: str = "description", chat: bool = False,
          plain_next: int = 0) -> dict:
    """Train one model and return its accuracy every ``every`` steps, with the random-object answer.

    ``compact_first``: the first that many steps train on compact rows (tokens: no other tokens, no filler; text:
    :func:`text_rows`' ``compact_style`` rows), a curriculum; the accuracy is always that of the held-out rows of the task
    asked for."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if task == "tokens":
        model, pad = _llama("scratch", VOCAB), 0
        test_raw = [recall_row(np.random.default_rng([99, i]), between, filler) for i in range(500)]
        test = [(s, [a]) for s, a in test_raw]
        baseline = float(np.mean([random_object_tokens(s, a) for s, a in test_raw]))

        def draw(b: int, step: int):
            bw, fl = (0, 0) if step <= compact_first else (between, filler)
            return [(s, [a]) for s, a in (recall_row(rng, bw, fl) for _ in range(b))]
    else:
        from transformers import PreTrainedTokenizerFast

        from vlselect.models.foundation import foundation_path

        tok = PreTrainedTokenizerFast.from_pretrained(str(foundation_path()))
        model, pad = _llama(init, None), tok.pad_token_id

        def enc(rows):
            return [(tok(f"{d}\n{q}")["input_ids"], tok(f" {a}")["input_ids"] + [tok.eos_token_id])
                    for d, q, a in rows]

        held = text_rows(np.random.default_rng(99), 500, True, chat=chat)
        test = enc(held)
        baseline = float(np.mean([random_object_text(d, a) for d, _, a in held]))
        train = enc(text_rows(np.random.default_rng([seed, 1]), 40000, False, chat=chat))
        easy = enc(text_rows(np.random.default_rng([seed, 2]), 40000, False, compact=compact_style)) \
            if compact_first else []
        # --chat --plain-next M: M steps of the plain question (" Answer:", the query three tokens from the
        # answer) between the compact rows and the bench's prompt: a curriculum on the query's distance
        plain = enc(text_rows(np.random.default_rng([seed, 1]), 40000, False)) if chat and plain_next else []

        def draw(b: int, step: int):
            src = easy if step <= compact_first else plain if step <= compact_first + plain_next and plain else train
            return [src[int(i)] for i in rng.integers(0, len(src), b)]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    points = [(0, accuracy(model, test, pad))]
    t0 = time.perf_counter()
    for s in range(1, steps + 1):
        ids, labels, mask = _collate(draw(32, s), pad)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if s % every == 0:
            points.append((s, accuracy(model, test, pad)))
            print(f"  {task}/{init} lr {lr:g} seed {seed}: step {s}: {100 * points[-1][1]:.1f}% "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"task": task, "init": init if task == "text" else "scratch", "lr": lr, "seed": seed,
            "between": between, "filler": filler, "compact_first": compact_first,
            **({"compact_style": compact_style} if task == "text" and compact_first else {}),
            **({"chat": True} if chat else {}), **({"plain_next": plain_next} if chat and plain_next else {}),
            "random_object": round(100 * baseline, 1), "seconds": round(time.perf_counter() - t0),
            "curve": [[s, round(100 * a, 1)] for s, a in points]}


def print_table(runs: list[dict]) -> None:
    """The curves as a table: one row per lr and seed, about seven step columns, and the first step at 90%."""
    r0 = runs[0]
    what = (f"text from {r0['init']}" + (" (chat template, format line)" if r0.get("chat") else "")
            + (f", {r0['plain_next']} plain-question steps after the compact ones" if r0.get("plain_next") else "")
            if r0["task"] == "text" else
            f"tokens from scratch, {r0.get('between', 0)} other tokens after each pair, {r0.get('filler', 0)} after "
            "the query") + (f", {r0['compact_first']} compact steps first" if r0.get("compact_first") else "") \
        + (f" ({r0.get('compact_style', 'description')})" if r0["task"] == "text" and r0.get("compact_first") else "")
    print(f"\nassociative recall, {what} (accuracy %, 500 held-out rows; random-object answer {r0['random_object']})")
    marks = [s for s, _ in r0["curve"]]
    show = sorted(set(marks[::max(1, (len(marks) - 1) // 6)]) | {marks[-1]})  # about seven columns
    print("| lr | seed | " + " | ".join(f"step {s}" for s in show) + " | first step at 90% | seconds |")
    print("|---" * (len(show) + 4) + "|")
    for r in runs:
        acc = dict(r["curve"])
        first = next((s for s, v in r["curve"] if v >= 90), None)
        print(f"| {r['lr']:g} | {r['seed']} | " + " | ".join(f"{acc[s]:.1f}" for s in show)
              + f" | {first if first is not None else 'never'} | {r['seconds']} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=("tokens", "text"))
    ap.add_argument("--table", type=Path, nargs="+", default=None, help="print the tables of saved --json files")
    ap.add_argument("--init", choices=("scratch", "foundation"), default="scratch", help="text only")
    ap.add_argument("--lr", type=float, nargs="+", default=[1e-3, 3e-4])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--between", type=int, default=0, help="tokens: other tokens after each pair")
    ap.add_argument("--filler", type=int, default=0, help="tokens: FILL tokens after the queried shape")
    ap.add_argument("--compact-first", type=int, default=0,
                    help="train that many steps on compact rows first (a curriculum; text: colour and shape only)")
    ap.add_argument("--compact-style", choices=("description", "lookup"), default="description",
                    help="text: compact rows keep the question (description) or ask the shape alone (lookup)")
    ap.add_argument("--chat", action="store_true", help="text: the question with its format line in the chat "
                    "template, as the bench asks it (default: the question then ' Answer:')")
    ap.add_argument("--plain-next", type=int, default=0, help="with --chat: that many steps of the plain question "
                    "after the compact ones, before the bench's prompt (a curriculum on the query's distance)")
    ap.add_argument("--json", type=Path, default=None, help="write the curves here")
    a = ap.parse_args()
    if a.table:
        missing = [str(f) for f in a.table if not f.is_file()]
        if missing:
            ap.error(f"no such curves file: {', '.join(missing)} (write one with --json)")
        for f in a.table:
            print_table(json.loads(f.read_text()))
        return
    if a.task is None:
        ap.error("--task or --table is required")

    import torch
    import transformers

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    runs = [curve(a.task, a.init, lr, a.steps, a.every, seed, a.between, a.filler, a.compact_first,
                  a.compact_style, a.chat, a.plain_next)
            for lr in a.lr for seed in a.seeds]
    print_table(runs)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
