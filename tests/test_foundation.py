"""The world's foundation (issue 12): the text pool, projector-only alignment, the shipped checkpoint, its
recipe and fingerprint, and rebuilding it from the recipe."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fixtures_models import tiny_llava, tiny_pool  # noqa: F401


# --------------------------------------------------------------------------------------------- the text pool


def test_text_pool_avoids_eval_scenes_and_answers_correctly(tmp_path):
    from vlselect.world.make import make_text_pool

    info = make_text_pool(tmp_path / "t", size=600, seed=3, image_size=24, avoid=((0, 30),))
    recs = json.loads((tmp_path / "t" / "pool.json").read_text())
    assert len(recs) == 600 and not any("image" in r for r in recs)
    kinds = {r["task"].split("_")[0] for r in recs}
    assert kinds == {"read", "describe", "chat"}
    # the descriptions of the avoided world's evaluation pictures never occur as a context
    from vlselect.world.build import WorldConfig, plan_eval
    from vlselect.world.tasks import caption_text

    _, pictures = plan_eval(WorldConfig(seed=0, eval_size=30, image_size=24))
    eval_captions = {caption_text(p.scene) for p in pictures}
    assert len(eval_captions) > 200
    contexts = {r["conversations"][0]["value"].split("\n")[0] for r in recs if r["task"].startswith("read")}
    contexts |= {r["conversations"][1]["value"] for r in recs if r["task"] == "describe"}
    assert contexts and not (contexts & eval_captions)
    # a hand-checkable reading question: the colour of the object at a named position in the description
    for r in recs:
        if r["task"] == "read_color_at_pos":
            ctx, q = r["conversations"][0]["value"].split("\n")[:2]
            pos = q.split(" at the ")[-1].rstrip("?") if " at the " in q else None
            if pos is None:
                continue
            for part in ctx.rstrip(".").replace(" and ", ", ").split(", "):
                if part.endswith(f" at the {pos}"):
                    assert part.split()[2] == r["conversations"][1]["value"]
    # deterministic in the seed
    make_text_pool(tmp_path / "t2", size=600, seed=3, image_size=24, avoid=((0, 30),))
    assert (tmp_path / "t2" / "pool.json").read_bytes() == (tmp_path / "t" / "pool.json").read_bytes()
    assert sum(info.task_counts.values()) == 600


def test_sentence_answers_keep_the_questions_and_drop_the_short_format(tmp_path):
    """``answer_style="sentence"``: the same records as the short style (same scenes, questions, answers), but the
    reading prompts lose the format prompt and the answer is a sentence holding the short answer; the recipe field
    reaches the text pool and a recipe without it reads as the shipped one."""
    from vlselect.errors import ConfigError
    from vlselect.models.foundation import FoundationRecipe
    from vlselect.world.make import make_text_pool
    from vlselect.world.vocab import OPTION_SUFFIX, SHORT_SUFFIX

    make_text_pool(tmp_path / "s", size=400, seed=5, image_size=24, avoid=((0, 30),))
    make_text_pool(tmp_path / "l", size=400, seed=5, image_size=24, avoid=((0, 30),), answer_style="sentence")
    short = json.loads((tmp_path / "s" / "pool.json").read_text())
    long = json.loads((tmp_path / "l" / "pool.json").read_text())
    assert [r["task"] for r in short] == [r["task"] for r in long]
    n_read = 0
    for a, b in zip(short, long):
        (qa, aa), (qb, ab) = [[t["value"] for t in r["conversations"]] for r in (a, b)]
        if not a["task"].startswith("read"):
            assert a == b
            continue
        n_read += 1
        last = "\n" + (OPTION_SUFFIX if a["task"].startswith("read_mc") else SHORT_SUFFIX)
        assert qa.endswith(last) and qb == qa[: -len(last)]
        assert ab == f"The answer is {aa}."
        assert SHORT_SUFFIX not in qb and OPTION_SUFFIX not in qb
    assert n_read > 150
    assert json.loads((tmp_path / "l" / "world.json").read_text())["answer_style"] == "sentence"
    assert "answer_style" not in json.loads((tmp_path / "s" / "world.json").read_text())
    with pytest.raises(ConfigError, match="answer_style='verbose'"):
        make_text_pool(tmp_path / "x", size=10, seed=5, answer_style="verbose")
    assert FoundationRecipe().to_json()["answer_style"] == "sentence"  # the shipped recipe
    rc = FoundationRecipe(answer_style="short", short_kinds=())
    assert "answer_style" not in rc.to_json() and FoundationRecipe.from_json(rc.to_json()) == rc


def test_format_share_teaches_the_instruction_on_chat_facts_only(tmp_path):
    """``format_share``: a share of the one-word chat facts (arithmetic, colour mixing, sides) is asked with the
    short-answer format prompt and answered in one word; every other record is the same as without it, the
    answers are right (checked against the questions), and the recipe field reaches the pool and reads back."""
    import re

    from vlselect.errors import ConfigError
    from vlselect.models.foundation import FoundationRecipe
    from vlselect.world.make import make_text_pool
    from vlselect.world.vocab import SHORT_SUFFIX, SIDES

    kw = dict(size=1500, seed=5, image_size=24, avoid=((0, 30),), answer_style="sentence")
    make_text_pool(tmp_path / "none", **kw)
    make_text_pool(tmp_path / "half", format_share=0.5, **kw)
    make_text_pool(tmp_path / "all", format_share=1.0, **kw)
    none, half, every = (json.loads((tmp_path / n / "pool.json").read_text()) for n in ("none", "half", "all"))
    facts = {"chat_add", "chat_mix", "chat_sides"}
    assert [r["task"] for r in none] == [r["task"] for r in half] == [r["task"] for r in every]
    changed = 0
    for a, h, e in zip(none, half, every):
        if a["task"] not in facts:
            assert a == h == e
            continue
        (qa, aa), (qh, ah), (qe, ae) = [[t["value"] for t in r["conversations"]] for r in (a, h, e)]
        assert aa.endswith(".") and SHORT_SUFFIX not in qa  # without the share: a sentence, no prompt
        assert qe == f"{qa}\n{SHORT_SUFFIX}" and (qh, ah) in ((qa, aa), (qe, ae))
        changed += (qh, ah) != (qa, aa)
        if a["task"] == "chat_add":
            x, y = map(int, re.fullmatch(r"What is (\d) plus (\d)\?", qa).groups())
            assert ae == str(x + y)
        elif a["task"] == "chat_sides":
            assert ae == SIDES[re.fullmatch(r"How many sides does a (\w+) have\?", qa).group(1)]
        else:
            pair = re.fullmatch(r"What color do you get when you mix (\w+ and \w+)\?", qa).group(1)
            assert aa == f"Mixing {pair} gives {ae}."
    n_facts = sum(r["task"] in facts for r in none)
    assert n_facts > 100 and 0.35 * n_facts < changed < 0.65 * n_facts
    assert json.loads((tmp_path / "half" / "world.json").read_text())["format_share"] == 0.5
    assert "format_share" not in json.loads((tmp_path / "none" / "world.json").read_text())
    with pytest.raises(ConfigError, match="format_share=1.5"):
        make_text_pool(tmp_path / "x", size=10, seed=5, format_share=1.5)
    assert "format_share" not in FoundationRecipe().to_json()
    rc = FoundationRecipe(format_share=0.5)
    assert rc.to_json()["format_share"] == 0.5 and FoundationRecipe.from_json(rc.to_json()) == rc


def test_short_kinds_keep_the_short_format_for_the_named_reading_kinds_only(tmp_path):
    """``short_kinds`` (with sentence answers): the named reading kinds are asked and answered as the short-answer
    pool asks them, every other record as the sentence pool does; the recipe field reaches the pool, reads back,
    and is omitted from the shipped recipe's JSON."""
    from vlselect.errors import ConfigError
    from vlselect.models.foundation import FoundationRecipe
    from vlselect.world.make import make_text_pool
    from vlselect.world.vocab import SHORT_SUFFIX

    kw = dict(size=1200, seed=3, image_size=24, avoid=((0, 30),))
    make_text_pool(tmp_path / "short", answer_style="short", **kw)
    make_text_pool(tmp_path / "sentence", answer_style="sentence", **kw)
    make_text_pool(tmp_path / "mixed", answer_style="sentence", short_kinds=("color_of_shape", "count_all"), **kw)
    short, sentence, mixed = (json.loads((tmp_path / n / "pool.json").read_text())
                              for n in ("short", "sentence", "mixed"))
    assert [r["task"] for r in short] == [r["task"] for r in sentence] == [r["task"] for r in mixed]
    seen = set()
    for a, b, m in zip(short, sentence, mixed):
        if a["task"] in ("read_color_of_shape", "read_count_all"):
            assert m == a and m != b
            q, ans = (t["value"] for t in m["conversations"])
            assert q.endswith(SHORT_SUFFIX) and not ans.startswith("The answer is")
            seen.add(a["task"])
        else:
            assert m == b
    assert seen == {"read_color_of_shape", "read_count_all"}
    assert sum(r["task"].startswith("read_") and r["conversations"][1]["value"].startswith("The answer is")
               for r in mixed) > 400  # the other kinds still answer in sentences
    world = json.loads((tmp_path / "mixed" / "world.json").read_text())
    assert world["short_kinds"] == ["color_of_shape", "count_all"]
    assert "short_kinds" not in json.loads((tmp_path / "sentence" / "world.json").read_text())
    with pytest.raises(ConfigError, match="not reading kinds"):
        make_text_pool(tmp_path / "x", size=10, seed=3, answer_style="sentence", short_kinds=("colour",))
    with pytest.raises(ConfigError, match="needs answer_style='sentence'"):
        make_text_pool(tmp_path / "y", size=10, seed=3, short_kinds=("count_all",))
    from dataclasses import replace

    assert FoundationRecipe().to_json()["short_kinds"] == ["color_of_shape", "count_all", "pos_of", "exist",
                                                         "mc_color"]  # the shipped recipe
    none = replace(FoundationRecipe(), short_kinds=())
    assert "short_kinds" not in none.to_json() and FoundationRecipe.from_json(none.to_json()) == none
    rc = FoundationRecipe(answer_style="sentence", short_kinds=("color_of_shape",))
    assert rc.to_json()["short_kinds"] == ["color_of_shape"] and FoundationRecipe.from_json(rc.to_json()) == rc


# ------------------------------------------------------------------------------------- projector-only training


def test_projector_adapter_trains_only_the_projector(tmp_path, tiny_llava, tiny_pool):  # noqa: F811
    import torch
    from safetensors.torch import load_file

    from vlselect.train import train_lora

    pool, images = tiny_pool
    res = train_lora(tiny_llava, pool, images, tmp_path / "run", adapter="projector", epochs=1, batch_size=2,
                     gradient_checkpointing=False, progress=False, lr=1e-2)
    before = load_file(str(Path(tiny_llava) / "model.safetensors"))
    after = load_file(str(Path(res.final_dir) / "model.safetensors"))
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("multi_modal_projector" in k for k in changed)
    assert any("multi_modal_projector" in k for k in changed)
    n_proj = sum(v.numel() for k, v in before.items() if "multi_modal_projector" in k)
    assert res.trainable_parameters == n_proj


def test_stage_two_lora_keeps_the_vision_tower_frozen(tmp_path, tiny_llava, tiny_pool):  # noqa: F811
    """The bench's fine-tuning (LLaVA-1.5 stage 2): LoRA on the language model, the projector in full, the vision
    tower untouched (compared weight by weight with the base)."""
    import torch
    from safetensors.torch import load_file

    from vlselect.train import train_lora

    pool, images = tiny_pool
    res = train_lora(tiny_llava, pool, images, tmp_path / "run", adapter="lora", r=4, lora_alpha=8, epochs=1,
                     batch_size=2, gradient_checkpointing=False, progress=False, lr=1e-2, projector_lr=1e-2)
    before = load_file(str(Path(tiny_llava) / "model.safetensors"))
    after = load_file(str(Path(res.final_dir) / "model.safetensors"))
    vision = [k for k in before if "vision_tower" in k]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    assert any(not torch.equal(before[k], after[k]) for k in before if "multi_modal_projector" in k)
    assert any(not torch.equal(before[k], after[k]) for k in before if "language_model" in k and "q_proj" in k)


# ------------------------------------------------------------------------------------------- encode cache


def test_encode_cache_reuses_only_identical_inputs(tmp_path, tiny_llava, tiny_pool):  # noqa: F811
    import os

    import torch
    from PIL import Image

    from vlselect.models import encode_sample, load_vlm
    from vlselect.pool import open_pool
    from vlselect.models.encode_cache import EncodeCache

    pool_path, images = tiny_pool
    img_dir = tmp_path / "images"
    shutil.copytree(images, img_dir)
    loaded = load_vlm(tiny_llava, dtype=torch.float32)
    pool = open_pool(pool_path)
    s = next(x for x in pool if x.images)
    cache = EncodeCache()
    a = cache.encode(loaded, s, img_dir)
    b = cache.encode(loaded, s, img_dir)
    assert (cache.hits, cache.misses) == (1, 1)
    ref = encode_sample(loaded, s, img_dir)
    for k in ref:
        assert torch.equal(a[k], ref[k]) and torch.equal(b[k], ref[k])
    # the picture changes on disk: encoded again, with the new pixels
    p = img_dir / s.images[0]
    st = p.stat()
    Image.new("RGB", Image.open(p).size, (250, 5, 5)).save(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    c = cache.encode(loaded, s, img_dir)
    assert cache.misses == 2 and not torch.equal(c["pixel_values"], a["pixel_values"])
    assert torch.equal(c["pixel_values"], encode_sample(loaded, s, img_dir)["pixel_values"])
    # another template is another encoding
    loaded.extra.pop("encode_cache_key", None)
    loaded.extra["template"] = "llava_v1"
    d = cache.encode(loaded, s, img_dir)
    assert cache.misses == 3 and not torch.equal(d["input_ids"], c["input_ids"])
    # 0 bytes turns it off
    off = EncodeCache(0)
    off.encode(loaded, s, img_dir)
    off.encode(loaded, s, img_dir)
    assert (off.hits, off.misses) == (0, 0)


def test_encode_cache_is_bounded_in_bytes(tiny_llava, tiny_pool):  # noqa: F811
    """A LLaVA-1.5 sample carries 1.4 MB of pixels: the bound is the bytes held, least recently used dropped."""
    import torch

    from vlselect.models import encode_sample, load_vlm
    from vlselect.models.encode_cache import EncodeCache
    from vlselect.pool import open_pool

    pool_path, images = tiny_pool
    loaded = load_vlm(tiny_llava, dtype=torch.float32)
    samples = [x for x in open_pool(pool_path) if x.images][:3]
    sizes = []
    for x in samples:  # the bytes of each encoding, counted by hand
        enc = encode_sample(loaded, x, images)
        sizes.append(sum(v.numel() * v.element_size() for v in enc.values() if isinstance(v, torch.Tensor)))
    assert sizes[0] > 1000
    cache = EncodeCache(max_bytes=sizes[0] + sizes[1] + sizes[2] - 1)  # room for two of the three
    for x in samples:
        cache.encode(loaded, x, images)
    assert len(cache) == 2 and cache.bytes == sizes[1] + sizes[2]
    cache.encode(loaded, samples[0], images)  # the oldest was dropped: encoded again, and now drops samples[1]
    assert cache.misses == 4 and cache.bytes == sizes[2] + sizes[0]
    cache.encode(loaded, samples[2], images)
    assert cache.hits == 1
    small = EncodeCache(max_bytes=min(sizes) - 1)  # an encoding larger than the whole bound is never held
    small.encode(loaded, samples[0], images)
    assert len(small) == 0 and small.bytes == 0


def test_evaluation_batches_are_encoded_once_and_answer_the_same(tmp_path, monkeypatch, tiny_llava,  # noqa: F811
                                                                  tiny_pool):  # noqa: F811
    """The bench evaluates every run of a worker on the same sets: each batch is encoded once per process, and the
    answers are those of encoding every batch afresh (the cache turned off); a replaced picture is encoded again."""
    import os

    import torch
    from PIL import Image

    import vlselect.models.encode_cache as ec
    from vlselect.evaluate.run import generate_answers
    from vlselect.models import load_vlm
    from vlselect.pool import open_pool

    pool_path, images = tiny_pool
    img_dir = tmp_path / "images"
    shutil.copytree(images, img_dir)
    loaded = load_vlm(tiny_llava, dtype=torch.float32)
    samples = [x for x in open_pool(pool_path) if x.images][:5]
    questions = [x.conversations[0]["value"].replace("<image>", "").strip() for x in samples]
    pics = [x.images[0] for x in samples]

    def answers(cache):
        monkeypatch.setattr(ec, "_CACHE", cache)
        return generate_answers(loaded, questions, pics, img_dir, batch_size=2, max_new_tokens=6)

    assert len(questions) >= 3 and len(set(pics)) == len(pics)
    nb = -(-len(questions) // 2)  # batches of 2
    fresh = answers(ec.EncodeCache(0))  # every batch encoded by the processor, nothing kept
    assert len(fresh) == len(questions)
    cache = ec.EncodeCache()
    assert answers(cache) == fresh and (cache.hits, cache.misses) == (0, nb)
    assert answers(cache) == fresh and (cache.hits, cache.misses) == (nb, nb)
    # another picture under the same name: its batch (the first) is encoded again, with the new pixels
    p = img_dir / pics[0]
    st = p.stat()
    Image.new("RGB", Image.open(p).size, (250, 5, 5)).save(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = answers(cache)
    assert (cache.hits, cache.misses) == (2 * nb - 1, nb + 1)
    assert again == answers(ec.EncodeCache(0))


# --------------------------------------------------------------------------------------- the shipped foundation


def _weights_sha256(d: Path) -> str:
    """The fingerprint recomputed here: SHA-256 over config.json and the weight files (names sorted)."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(x for x in d.iterdir() if x.name == "config.json" or x.suffix in (".safetensors", ".bin")):
        h.update(p.name.encode() + b"\0")
        h.update(p.read_bytes())
    return "sha256:" + h.hexdigest()


def test_shipped_foundation_recipe_and_fingerprint():
    from vlselect.models.foundation import SHIPPED_RECIPE, FoundationRecipe, foundation_path, verify_foundation

    d = foundation_path()
    info = verify_foundation(d)
    assert info["recipe"] == SHIPPED_RECIPE.to_json()  # the recipe the builder builds by default is the one shipped
    assert FoundationRecipe.from_json(info["recipe"]) == SHIPPED_RECIPE
    assert info["fingerprint"] == _weights_sha256(d)
    size = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
    assert size < 8 * 2**20  # a few MB: it ships inside the package
    # every stage trained: its loss fell
    for stage in ("language", "vision", "align", "instruct"):
        st = info["stages"][stage]
        assert st["last"] < st["first"], stage


def test_shipped_foundation_is_pretrained():
    """It answers the world's questions from a description, and captions a picture (colours and positions right),
    where a random model of the same size does neither."""
    import torch

    from vlselect.models import load_vlm
    from vlselect.models.encode import generation_prompt
    from vlselect.models.foundation import foundation_path
    from vlselect.world.build import _stream
    from vlselect.world.scene import Obj, Scene, render
    from vlselect.world.tasks import caption_text

    loaded = load_vlm(foundation_path(), dtype=torch.float32)
    tok = loaded.processor.tokenizer
    model = loaded.model

    def answer(prompt: str, image=None, n: int = 8) -> str:
        text = generation_prompt(loaded, prompt, n_images=0 if image is None else 1)
        enc = loaded.processor(text=[text], images=None if image is None else [image], return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=n, do_sample=False)
        return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    # reading: the colour of the shape a question names, from a description of 1-4 objects (the foundation since
    # 2026-12-06 reads colours 19 of 20 but counts the objects of a description 5 of 20, mostly one or two too many:
    # benchmarks/RESULTS.md, issue 12)
    rng = _stream(5, "foundation-test")
    from vlselect.world.scene import sample_scene
    from vlselect.world.tasks import ask_color_of_shape

    right = asked = 0
    for k in range(20):
        sc = sample_scene(rng, n_objects=1 + k % 4)
        qa = ask_color_of_shape(sc, rng, canonical=True)
        if qa is not None:
            asked += 1
            right += answer(f"{caption_text(sc)}\n{qa.prompt}") == qa.answer
    assert asked == 20 and right >= 16  # chance 4 of 20 (five colours)

    # seeing: a caption of a rendered picture names the object's colour and position (its shapes it confuses:
    # benchmarks/RESULTS.md, issue 12, "What the foundation knows")
    from PIL import Image

    hits = 0
    for k, (color, cell, pos) in enumerate([("red", 4, "center"), ("blue", 0, "top left"), ("green", 8, "bottom right"),
                                            ("yellow", 2, "top right"), ("purple", 4, "center"), ("red", 6, "bottom left")]):
        sc = Scene((Obj("circle", color, "large", cell),), None)
        img = Image.fromarray(render(sc, 100 + k, 24))
        cap = answer("Provide a short description of the image.", img, n=16).lower()
        hits += f"{color} " in cap and f"at the {pos}." in cap
    assert hits >= 4


def test_tampered_foundation_is_refused(tmp_path):
    from vlselect.errors import ModelError
    from vlselect.models.foundation import foundation_path, verify_foundation

    d = tmp_path / "f"
    shutil.copytree(foundation_path(), d, ignore=shutil.ignore_patterns(".vlselect_model_hash.json"))
    w = d / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0x01
    w.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="differ from the recorded fingerprint"):
        verify_foundation(d)


@pytest.mark.slow
def test_rebuild_from_recipe_reproduces_the_weights(tmp_path):
    """The recipe decides the weights: two builds of one (scaled-down) recipe are byte-identical, another seed is
    not. The shipped foundation is the full recipe built the same way (``vlselect models foundation DIR``)."""
    import torch

    from vlselect.models.foundation import FoundationRecipe, verify_foundation
    from vlselect.train.foundation import build_foundation

    torch.set_num_threads(1)
    rc = FoundationRecipe().scaled(0.0006)
    a = verify_foundation(build_foundation(tmp_path / "a", rc, progress=False, log=lambda m: None))
    b = verify_foundation(build_foundation(tmp_path / "b", rc, progress=False, log=lambda m: None))
    assert a["fingerprint"] == b["fingerprint"] and a["recipe"] == rc.to_json()
    from dataclasses import replace

    c = verify_foundation(build_foundation(tmp_path / "c", replace(rc, seed=1), progress=False, log=lambda m: None))
    assert c["fingerprint"] != a["fingerprint"]


def test_another_recipe_never_reuses_this_ones_pools(tmp_path):
    """Rebuilding into the same folder with another recipe recomputes: the text pool of the first build (reused by
    folder) must not feed the second (found in review: the work folder was shared by every recipe)."""
    import torch

    from vlselect.models.foundation import FoundationRecipe, verify_foundation
    from vlselect.train.foundation import build_foundation

    torch.set_num_threads(1)
    small = FoundationRecipe().scaled(0.0006)
    from dataclasses import replace

    big = replace(small, text_size=small.text_size + 100)
    a = verify_foundation(build_foundation(tmp_path / "f", small, progress=False, log=lambda m: None))
    b = verify_foundation(build_foundation(tmp_path / "f", big, progress=False, log=lambda m: None))
    assert b["recipe"]["text_size"] == big.text_size and a["fingerprint"] != b["fingerprint"]
    pools = sorted((tmp_path / ".f-work").glob("*/text-pool/pool.json"))
    assert sorted(len(json.loads(p.read_text())) for p in pools) == [small.text_size, big.text_size]
    assert b["stages"]["language"]["steps"] == -(-big.text_size // big.batch_size)


def test_vision_epochs_train_stage_two_longer_and_are_recorded(tmp_path):
    """``vision_epochs`` (the measured lever for OCR, benchmarks/RESULTS.md) reaches stage 2 and only stage 2, is
    kept in the recipe, and a recipe without it reads as the shipped one (1 epoch, the same JSON as before)."""
    import re

    import torch

    from dataclasses import replace

    from vlselect.models.foundation import FoundationRecipe, verify_foundation
    from vlselect.train.foundation import build_foundation

    assert "vision_epochs" not in FoundationRecipe().to_json()
    assert FoundationRecipe.from_json(FoundationRecipe().to_json()).vision_epochs == 1
    torch.set_num_threads(1)
    one = FoundationRecipe().scaled(0.0006)
    two = replace(one, vision_epochs=2)
    a = verify_foundation(build_foundation(tmp_path / "a", one, progress=False, log=lambda m: None))
    b = verify_foundation(build_foundation(tmp_path / "b", two, progress=False, log=lambda m: None))
    assert b["recipe"]["vision_epochs"] == 2 and FoundationRecipe.from_json(b["recipe"]) == two
    assert b["stages"]["vision"]["steps"] == 2 * a["stages"]["vision"]["steps"]
    assert b["stages"]["language"]["steps"] == a["stages"]["language"]["steps"]
    assert b["stages"]["align"]["steps"] == a["stages"]["align"]["steps"]
    assert a["fingerprint"] != b["fingerprint"]
    for work in (tmp_path / ".a-work").iterdir():  # the shipped recipe's counted captions
        caps = json.loads((work / "vision-pool" / "pool.json").read_text())
        assert all(re.match(r"\d objects?: ", r["conversations"][1]["value"]) for r in caps)


def test_counted_captions_reach_the_caption_pools_and_are_recorded(tmp_path):
    """``counted_captions`` (the measured lever for counting, benchmarks/RESULTS.md) makes the captions of stages 2
    and 3 start with the number of objects and is kept in the recipe (the shipped recipe has it); a recipe JSON
    without the field reads as the first foundation's (plain captions, the same JSON as before)."""
    import re

    import torch

    from dataclasses import replace

    from vlselect.models.foundation import FoundationRecipe, verify_foundation
    from vlselect.train.foundation import build_foundation

    assert FoundationRecipe().counted_captions is True and FoundationRecipe().to_json()["counted_captions"] is True
    plain = replace(FoundationRecipe(), counted_captions=False)
    assert "counted_captions" not in plain.to_json() and FoundationRecipe.from_json(plain.to_json()) == plain
    torch.set_num_threads(1)
    rc = replace(FoundationRecipe().scaled(0.0006), counted_captions=True)
    info = verify_foundation(build_foundation(tmp_path / "c", rc, progress=False, log=lambda m: None))
    assert info["recipe"]["counted_captions"] is True and FoundationRecipe.from_json(info["recipe"]) == rc
    (work,) = (tmp_path / ".c-work").iterdir()
    for name, size in (("vision-pool", rc.vision_size), ("align-pool", rc.align_size)):
        assert json.loads((work / name / "world.json").read_text())["counted_captions"] is True
        recs = json.loads((work / name / "pool.json").read_text())
        assert len(recs) == size
        for r in recs:
            n = len(r["meta"]["scene"]["objects"])
            assert re.match(rf"{n} objects?: a (small|large) ", r["conversations"][1]["value"])
    # the text pool is stage 1's and has no captions of pictures
    assert "counted_captions" not in json.loads((work / "text-pool" / "world.json").read_text())


def test_build_command_says_whether_it_matches_the_shipped_foundation(tmp_path, monkeypatch):
    """``vlselect models foundation DIR`` compares its result with the shipped copy: identical, another recipe
    (then the bytes are not comparable; it once said "the recipe is the same" for a --counted-captions build), or
    the same recipe with another fingerprint: the same weights saved by another transformers version (config.json
    records it; a rebuild under transformers 5.25 was once put down to floating point), or other weights."""
    from safetensors.torch import load_file, save_file
    from typer.testing import CliRunner

    import vlselect.train.foundation as tf
    from vlselect.cli import app
    from vlselect.models.foundation import MARKER, foundation_path
    from vlselect.models.load import model_hash

    def other_version(d):
        c = json.loads((d / "config.json").read_text())
        c["transformers_version"] = "9.9.9"
        (d / "config.json").write_text(json.dumps(c, indent=2))

    def other_key(d):
        c = json.loads((d / "config.json").read_text())
        c["use_cache"] = not c.get("use_cache", True)
        (d / "config.json").write_text(json.dumps(c, indent=2))

    def other_weights(d):
        w = load_file(d / "model.safetensors")
        name = sorted(w)[0]
        w[name] = w[name] + 1e-3
        save_file(w, d / "model.safetensors", metadata={"format": "pt"})

    def fake_build(edit, edit_files=None):
        def build(out_dir, recipe, **_):
            shutil.copytree(foundation_path(), out_dir, ignore=shutil.ignore_patterns(".vlselect_model_hash.json"))
            m = json.loads((Path(out_dir) / MARKER).read_text())
            edit(m)
            if edit_files is not None:
                edit_files(Path(out_dir))
                m["fingerprint"] = model_hash(out_dir)
            (Path(out_dir) / MARKER).write_text(json.dumps(m))
            return Path(out_dir)
        return build

    runner = CliRunner()
    shipped_version = json.loads((foundation_path() / "config.json").read_text())["transformers_version"]
    same = lambda m: None  # noqa: E731
    cases = [(same, None, "identical to the shipped foundation"),
             (lambda m: m["recipe"].update(counted_captions=False), None,
              "another recipe than the shipped foundation's (differs in counted_captions)"),
             (same, other_version, "the weights are identical to the shipped foundation's; only config.json differs "
                                   f"(saved by transformers 9.9.9, the shipped one by {shipped_version})"),
             (same, lambda d: (other_version(d), other_key(d)), "(saved by transformers 9.9.9, the shipped one by "
                                                                  f"{shipped_version}; also in use_cache)"),
             (same, other_key, "only config.json differs (in use_cache)"),
             (same, other_weights, "the recipe is the same, so floating-point differences"),
             (same, lambda d: (other_weights(d), other_version(d)), "it was also saved by transformers 9.9.9")]
    for k, (edit, edit_files, said) in enumerate(cases):
        monkeypatch.setattr(tf, "build_foundation", fake_build(edit, edit_files))
        res = runner.invoke(app, ["models", "foundation", str(tmp_path / f"f{k}")])
        assert res.exit_code == 0, res.output
        assert said in res.output


def _captured_builds(monkeypatch):
    """The recipes ``vlselect models foundation`` asks to build, captured before any work, and a CLI runner."""
    from typer.testing import CliRunner

    import vlselect.train.foundation as tf

    seen = []

    def capture(out_dir, recipe, **_):
        seen.append(recipe)
        raise KeyboardInterrupt  # stop before any work

    monkeypatch.setattr(tf, "build_foundation", capture)
    return seen, CliRunner()


def test_build_command_flags_name_the_recipe(tmp_path, monkeypatch):
    """No flags build the shipped recipe; a flag changes that one field of it (``--plain-captions --answer-style
    short``: plain captions, every reading kind short); ``--sentence-answers --short-kinds none`` answers every kind
    in sentences; ``--short-kinds`` takes a comma-separated list."""
    from dataclasses import replace

    from vlselect.cli import app
    from vlselect.models.foundation import SHIPPED_RECIPE

    seen, runner = _captured_builds(monkeypatch)
    for args in ([], ["--plain-captions", "--answer-style", "short"], ["--sentence-answers", "--short-kinds", "none"],
                 ["--short-kinds", "count_all, ocr"], ["--instruct-word-share", "0.9"]):
        runner.invoke(app, ["models", "foundation", str(tmp_path / "f"), *args])
    shipped, first, sentence, two, signs = seen
    assert signs == replace(SHIPPED_RECIPE, instruct_word_share=0.9)
    assert shipped == SHIPPED_RECIPE and shipped.instruct_size == 40000 and shipped.vision_epochs == 2
    assert first == replace(SHIPPED_RECIPE, counted_captions=False, answer_style="short", short_kinds=())
    assert sentence == replace(SHIPPED_RECIPE, short_kinds=()) and two.lookup_steps == SHIPPED_RECIPE.lookup_steps
    assert (first.counted_captions, first.answer_style, first.short_kinds) == (False, "short", ())
    assert (sentence.counted_captions, sentence.answer_style, sentence.short_kinds) == (True, "sentence", ())
    assert two.short_kinds == ("count_all", "ocr")


def test_build_command_builds_the_recipe_of_a_file(tmp_path, monkeypatch):
    """``--recipe FILE`` builds a screened foundation's recipe (its marker, or the bare recipe object) field for
    field; recipe flags beside it, an unknown field, a missing file or bad JSON are refused with the file named."""
    from dataclasses import replace

    from vlselect.cli import app
    from vlselect.models.foundation import FoundationRecipe

    seen, runner = _captured_builds(monkeypatch)
    screened = replace(FoundationRecipe(), lookup_steps=5000, lookup_kinds=("color_of_shape", "pos_of"),
                       vision_epochs=2, align_lookup_share=0.67, align_lookup_kinds=("exist", "pos_of"))
    (tmp_path / "marker.json").write_text(json.dumps({"format": "vlselect-foundation/1",
                                                      "recipe": screened.to_json(), "fingerprint": "x"}))
    (tmp_path / "bare.json").write_text(json.dumps(screened.to_json()))
    for f in ("marker.json", "bare.json"):
        runner.invoke(app, ["models", "foundation", str(tmp_path / "f"), "--recipe", str(tmp_path / f)])
    assert seen == [screened, screened]
    runner.invoke(app, ["models", "foundation", str(tmp_path / "f"), "--recipe", str(tmp_path / "bare.json"),
                        "--scale", "0.01"])
    assert seen[-1] == screened.scaled(0.01) and seen[-1].align_lookup_kinds == ("exist", "pos_of")
    (tmp_path / "odd.json").write_text(json.dumps({**screened.to_json(), "lookup_speed": 3}))
    (tmp_path / "bad.json").write_text("{")
    for args, said in ((["--recipe", str(tmp_path / "bare.json"), "--vision-epochs", "2"], "leave --vision-epochs"),
                       (["--recipe", str(tmp_path / "odd.json")], "unknown recipe field(s) lookup_speed"),
                       (["--recipe", str(tmp_path / "none.json")], "no such file"),
                       (["--recipe", str(tmp_path / "bad.json")], "not JSON")):
        res = runner.invoke(app, ["models", "foundation", str(tmp_path / "f"), *args])
        assert res.exit_code != 0 and said in str(res.exception), (args, res.output, res.exception)
    assert len(seen) == 3


def test_recipe_files_of_the_earlier_foundations(tmp_path, monkeypatch):
    """``benchmarks/recipes/`` holds the recipe of every foundation shipped so far, for ``--recipe``: the first one
    (plain captions, every reading kind short: its JSON has none of the fields added since), the one of 2026-12-04
    (the class's defaults) and the one shipped now; the command builds each field for field."""
    from vlselect.cli import app
    from vlselect.models.foundation import ADDED_FIELDS, SHIPPED_RECIPE, FoundationRecipe

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "recipes"
    seen, runner = _captured_builds(monkeypatch)
    for name in ("first-2026-12-03", "half_short-2026-12-04", "four_stage-2026-12-06"):
        runner.invoke(app, ["models", "foundation", str(tmp_path / "f"), "--recipe", str(root / f"{name}.json")])
    first, half, four = seen
    assert not set(ADDED_FIELDS) & set(first.to_json())
    assert (first.counted_captions, first.answer_style, first.short_kinds, first.text_lr) == (False, "short", (), 1e-3)
    assert half == FoundationRecipe() and four == SHIPPED_RECIPE != half


# ------------------------------------------------------------------------- the lookup warm-up (lookup_steps)


def test_compact_caption_and_lookup_rows_by_hand():
    from vlselect.world.make import lookup_rows
    from vlselect.world.scene import Obj, Scene
    from vlselect.world.tasks import compact_caption

    scene = Scene((Obj("square", "red", "large", 0), Obj("circle", "blue", "small", 4),
                   Obj("square", "green", "small", 8)))
    assert compact_caption(scene) == "Red square, blue circle, green square."
    rows = lookup_rows(300, seed=3)
    assert rows == lookup_rows(300, seed=3) and rows != lookup_rows(300, seed=4)
    for prompt, answer in rows:
        desc, shape = prompt.split("\n")
        pairs = [p.split() for p in desc.lower().rstrip(".").split(", ")]
        # the shape asked for is the one object of that shape; the answer is its colour
        assert [s for _, s in pairs].count(shape) == 1 and answer == next(c for c, s in pairs if s == shape)


def test_lookup_warmup_trains_the_language_model_only_and_is_reused_only_for_its_parameters(tmp_path):
    import torch
    from safetensors.torch import load_file

    from vlselect.errors import ModelError
    from vlselect.models.tiny import build_tiny
    from vlselect.train.foundation import lookup_warmup

    torch.set_num_threads(1)
    init = build_tiny(tmp_path / "init", size="xs", image_size=24)
    res = lookup_warmup(init, tmp_path / "lk", steps=6, lr=1e-3, seed=0, batch_size=4, progress=False)
    before = load_file(str(Path(init) / "model.safetensors"))
    after = load_file(str(Path(res["dir"]) / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("language_model" in k or "lm_head" in k for k in changed)
    assert not any("vision_tower" in k or "multi_modal_projector" in k for k in changed)
    assert len(res["losses"]) == 6
    again = lookup_warmup(init, tmp_path / "lk", steps=6, lr=1e-3, seed=0, batch_size=4, progress=False)
    assert again["losses"] == res["losses"]  # reused, not retrained
    with pytest.raises(ModelError, match="other parameters"):
        lookup_warmup(init, tmp_path / "lk", steps=7, lr=1e-3, seed=0, batch_size=4, progress=False)
    # the curriculum's phases add their steps and are part of the parameters; a lookup-only warm-up's are unchanged
    assert "plain_steps" not in json.loads((tmp_path / "lk" / "done.json").read_text())["params"]
    cur = lookup_warmup(init, tmp_path / "cur", steps=2, plain_steps=3, chat_steps=1, lr=1e-3, seed=0, batch_size=4,
                        progress=False)
    assert len(cur["losses"]) == 6
    params = json.loads((tmp_path / "cur" / "done.json").read_text())["params"]
    assert (params["plain_steps"], params["chat_steps"]) == (3, 1)
    assert "kinds" not in params  # the colour of a shape alone: the parameters of before
    more = lookup_warmup(init, tmp_path / "more", steps=2, lr=1e-3, seed=0, batch_size=4, progress=False,
                         kinds=("color_of_shape", "exist"))
    assert json.loads((tmp_path / "more" / "done.json").read_text())["params"]["kinds"] == ["color_of_shape", "exist"]
    assert len(more["losses"]) == 2
    with pytest.raises(ModelError, match="other parameters"):  # the same steps over other kinds: not reused
        lookup_warmup(init, tmp_path / "more", steps=2, lr=1e-3, seed=0, batch_size=4, progress=False)
    # the chat rows go through the model's own chat template: the text the bench's training encodes for a turn
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(init)
    assert tok.apply_chat_template([{"role": "user", "content": "Q?"}], add_generation_prompt=True,
                                   tokenize=False) == "USER: Q? ASSISTANT:"


def test_lookup_steps_reach_the_build_and_the_recipe_and_leave_the_shipped_json_alone(tmp_path):
    from dataclasses import replace

    import torch

    from vlselect.models.foundation import FoundationRecipe, verify_foundation
    from vlselect.train.foundation import build_foundation

    assert "lookup_steps" not in FoundationRecipe().to_json()
    torch.set_num_threads(1)
    rc = replace(FoundationRecipe().scaled(0.0006), lookup_steps=3)
    info = verify_foundation(build_foundation(tmp_path / "f", rc, progress=False, log=lambda m: None))
    assert info["recipe"]["lookup_steps"] == 3 and FoundationRecipe.from_json(info["recipe"]) == rc
    assert info["stages"]["lookup"]["steps"] == 3
    assert replace(rc, lookup_steps=1000).scaled(0.01).lookup_steps == 10


def test_align_lookup_share_reaches_stage_3_and_leaves_the_shipped_json_alone(tmp_path):
    from dataclasses import replace

    import torch

    from vlselect.models.foundation import FoundationRecipe, verify_foundation
    from vlselect.train.foundation import build_foundation

    assert "align_lookup_share" not in FoundationRecipe().to_json()
    assert "align_lookup_kinds" not in FoundationRecipe().to_json()
    torch.set_num_threads(1)
    rc = replace(FoundationRecipe().scaled(0.0006), align_size=40, align_lookup_share=0.5,
                 align_lookup_kinds=("color_of_shape", "exist"))
    info = verify_foundation(build_foundation(tmp_path / "f", rc, work_dir=tmp_path / "w", progress=False,
                                              log=lambda m: None))
    assert info["recipe"]["align_lookup_share"] == 0.5 and FoundationRecipe.from_json(info["recipe"]) == rc
    assert info["recipe"]["align_lookup_kinds"] == ["color_of_shape", "exist"]
    (pool,) = (tmp_path / "w").glob("*/align-pool/pool.json")
    tasks = [r["task"] for r in json.loads(pool.read_text())]
    asked = tasks.count("vqa_color") + tasks.count("exist")
    assert len(tasks) == 40 and 10 <= asked <= 30 and tasks.count("caption") == 40 - asked
    assert tasks.count("vqa_color") >= 2 and tasks.count("exist") >= 2


def test_lookup_rows_of_the_curriculum_ask_the_worlds_question_plainly_then_as_the_bench_does():
    import re

    from vlselect.errors import ConfigError
    from vlselect.world.make import lookup_rows
    from vlselect.world.vocab import SHORT_SUFFIX

    for style in ("plain", "chat"):
        rows = lookup_rows(60, seed=2, style=style)
        for prompt, answer in rows:
            caption, question = prompt.removeprefix("USER: ").split("\n", 1)
            shape = re.search(r"(circle|square|triangle|cross)", question).group(1)
            objs = re.findall(r"(small|large) (\w+) (\w+)", caption)
            # the shape asked for is one object's; the answer is that object's colour
            assert [s for _, _, s in objs].count(shape) == 1 and answer == next(c for _, c, s in objs if s == shape)
            if style == "plain":
                assert prompt.endswith(" Answer:") and "\n" + SHORT_SUFFIX not in prompt
            else:  # the user turn as the pool asks it, format line last
                assert prompt.endswith(f"\n{SHORT_SUFFIX}") and not prompt.startswith("USER")
    with pytest.raises(ConfigError, match="style"):
        lookup_rows(1, style="fancy")


def test_lookup_rows_of_more_kinds_are_answered_by_their_description():
    """Existence, count of a colour, the option letter and the place of an object, each row checked against its own
    compact description (parsed here, not by the generator's code); the plain and chat rows ask the world's
    question of the kind."""
    import re

    from vlselect.errors import ConfigError
    from vlselect.world.make import LOOKUP_KINDS, lookup_rows
    from vlselect.world.vocab import OPTION_SUFFIX, SHORT_SUFFIX

    rows = lookup_rows(400, seed=4, kinds=LOOKUP_KINDS)
    seen = set()
    for prompt, answer in rows:
        desc, *rest = prompt.split("\n")
        parts = [p.split(" ") for p in desc.rstrip(".").lower().split(", ")]
        objs = [tuple(w[:2]) for w in parts]
        colours = [c for c, _ in objs]
        if rest[0].startswith("where "):  # "red cross at top left, ..." -> the place of the one red cross
            c, s = rest[0].split(" ")[1:]
            (place,) = [" ".join(w[3:]) for w in parts if tuple(w[:2]) == (c, s)]
            assert all(w[2] == "at" for w in parts) and answer == place
            seen.add(("pos_of", answer))
        elif rest[0].startswith("is "):
            c, s = rest[0].split(" ")[1:]
            assert answer == ("yes" if (c, s) in objs else "no")
            # the world's negatives are hard: the colour or the shape is in the description
            assert answer == "yes" or c in colours or s in [x for _, x in objs]
            seen.add(("exist", answer))
        elif rest[0].startswith("count "):
            assert answer == str(colours.count(rest[0].split(" ")[1]))
            seen.add(("count_color", answer != "0"))
        elif rest[0].startswith("A. "):
            options = dict(re.findall(r"([ABCD])\. (\w+)", rest[0]))
            (colour,) = [c for c, s in objs if s == rest[1]]
            assert options[answer] == colour and len(set(options.values())) == 4
            seen.add(("mc_color", answer))
        else:
            (colour,) = [c for c, s in objs if s == rest[0]]
            assert answer == colour
            seen.add(("color_of_shape",))
    assert {("exist", "yes"), ("exist", "no"), ("count_color", True), ("count_color", False),
            ("color_of_shape",)} <= seen and len({t[1] for t in seen if t[0] == "mc_color"}) == 4
    assert len({t[1] for t in seen if t[0] == "pos_of"}) == 9  # every place of the 3x3 grid
    for style in ("plain", "chat"):
        got = lookup_rows(200, seed=4, style=style, kinds=("exist", "count_color", "mc_color", "pos_of"))
        qs = [p.split("\n", 1)[1] for p, _ in got]
        assert any(q.startswith("How many") for q in qs) and any("A. " in q for q in qs)
        assert any(a in ("top left", "center", "bottom right") for _, a in got)
        if style == "chat":
            assert all(q.endswith(SHORT_SUFFIX) or q.endswith(OPTION_SUFFIX) for q in qs)
        else:
            assert all(q.endswith(" Answer:") and SHORT_SUFFIX not in q and OPTION_SUFFIX not in q for q in qs)
    assert lookup_rows(50, seed=4) == lookup_rows(50, seed=4, kinds=("color_of_shape",))
    with pytest.raises(ConfigError, match="kinds"):
        lookup_rows(1, kinds=("grounding",))


def test_instruct_stage_trains_language_model_and_projector_on_sentence_questions_and_is_recorded(tmp_path):
    """``instruct_size`` adds stage 4: its own pool (questions of every kind over pictures, sentences but for the
    short kinds), the language model and projector trained on it with the vision tower frozen, the marker's stage
    losses and recipe; the shipped recipe's JSON has none of its fields (its work folder and fingerprint stay)."""
    from dataclasses import replace

    import torch
    from safetensors.torch import load_file

    from vlselect.models.foundation import FoundationRecipe, verify_foundation
    from vlselect.train.foundation import build_foundation

    shipped = FoundationRecipe().to_json()
    assert not [k for k in shipped if k.startswith("instruct") or k.endswith("word_share")]
    assert FoundationRecipe.from_json(shipped) == FoundationRecipe()
    torch.set_num_threads(1)
    rc = replace(FoundationRecipe().scaled(0.0006), instruct_size=48, instruct_share=0.9, instruct_lr=1e-3,
                 instruct_short_kinds=("count_all",), vision_word_share=0.5, instruct_word_share=1.0)
    assert rc.to_json()["instruct_word_share"] == 1.0
    assert "instruct_word_share" not in replace(rc, instruct_word_share=0.15).to_json()
    info = verify_foundation(build_foundation(tmp_path / "f", rc, work_dir=tmp_path / "w", progress=False,
                                              log=lambda m: None))
    assert FoundationRecipe.from_json(info["recipe"]) == rc and info["recipe"]["instruct_size"] == 48
    assert info["stages"]["instruct"]["steps"] == 2  # 48 pictures, batch 32
    (work,) = (tmp_path / "w").iterdir()
    assert json.loads((work / "vision-pool" / "world.json").read_text())["config"]["word_share"] == 0.5
    assert json.loads((work / "align-pool" / "world.json").read_text())["config"]["word_share"] == 0.15
    assert json.loads((work / "instruct-pool" / "world.json").read_text())["config"]["word_share"] == 1.0
    recs = json.loads((work / "instruct-pool" / "pool.json").read_text())
    asked = [r for r in recs if r["task"] != "caption"]
    assert len(recs) == 48 and len(asked) >= 36
    for r in asked:
        a = r["conversations"][1]["value"]
        assert (a.startswith("The answer is ") and a.endswith(".")) == (r["meta"]["kind"] != "count_all")
    before = load_file(str(work / "align" / "final" / "model.safetensors"))
    after = load_file(str(tmp_path / "f" / "model.safetensors"))
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"language_model", "multi_modal_projector"}, changed
