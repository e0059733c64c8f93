"""Images (issue 13 item 3): ``pool check`` decodes fully (a truncated JPEG fails there), optionally through the
model's processor (``--model``); an image the processor rejects raises a skippable error, so ``--skip-bad`` covers it."""

from __future__ import annotations

import io
import json

import pytest
from fixtures_models import tiny_llava, tiny_qwen2vl  # noqa: F401
from PIL import Image

from vlselect.errors import PoolError
from vlselect.models import ImageRejectedError, encode_sample, load_vlm
from vlselect.pool import Sample
from cli_run import run




def conv():
    return [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A thing."}]


@pytest.fixture()
def image_pool(tmp_path):
    img = tmp_path / "images"
    img.mkdir()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(img / "good.png")
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buf, "JPEG", quality=90)
    (img / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # header intact, data cut
    Image.new("RGB", (6030, 28), (0, 0, 255)).save(img / "wide.png")  # aspect ratio 215 > Qwen2-VL's 200
    recs = [{"id": "g", "image": "good.png", "conversations": conv()},
            {"id": "t", "image": "truncated.jpg", "conversations": conv()},
            {"id": "w", "image": "wide.png", "conversations": conv()}]
    (tmp_path / "pool.json").write_text(json.dumps(recs))
    return tmp_path / "pool.json", img


def test_pool_check_decodes_fully(image_pool, capsys):
    pool, img = image_pool
    with Image.open(img / "truncated.jpg") as im:
        im.verify()  # what pool check did before: the header check passes
    code, out, _ = run(["pool", "check", str(pool), "--images", str(img), "--json"], capsys)
    r = json.loads(out)
    assert code == 1 and r["unreadable"] == 1 and r["missing"] == 0 and r["rejected"] == 0
    ex = r["examples"]["unreadable"][0]
    assert ex["id"] == "t" and ex["path"] == "truncated.jpg" and "truncated" in ex["error"]


def test_pool_check_with_model_counts_processor_rejections(image_pool, tiny_qwen2vl, tiny_llava, capsys):  # noqa: F811
    pool, img = image_pool
    code, out, _ = run(["pool", "check", str(pool), "--images", str(img), "--model", str(tiny_qwen2vl), "--json"],
                       capsys)
    r = json.loads(out)
    assert code == 1 and r["unreadable"] == 1 and r["rejected"] == 1 and r["records_with_problems"] == 2
    ex = r["examples"]["rejected"][0]
    assert ex["id"] == "w" and ex["path"] == "wide.png" and "aspect ratio" in ex["error"]
    # LLaVA pads to a square first: the same image is fine for it
    code, out, _ = run(["pool", "check", str(pool), "--images", str(img), "--model", str(tiny_llava), "--json"],
                       capsys)
    assert json.loads(out)["rejected"] == 0
    code, out, _ = run(["pool", "check", str(pool), "--images", str(img), "--model", str(tiny_qwen2vl)], capsys)
    flat = " ".join(out.split())
    assert "rejected by the processor 1" in flat and "rejected: row 2 id 'w': wide.png" in flat


def test_processor_rejection_is_skippable(image_pool, tiny_qwen2vl, tmp_path):  # noqa: F811
    from vlselect.features import FeatureStore
    from vlselect.features.activations import extract_activations

    pool, img = image_pool
    loaded = load_vlm(tiny_qwen2vl, device="cpu")
    with pytest.raises(ImageRejectedError, match=r"sample 'w': image 'wide.png'.*aspect ratio.*--skip-bad") as ei:
        encode_sample(loaded, Sample("w", ["wide.png"], conv()), img)
    assert isinstance(ei.value, PoolError)  # what --skip-bad catches
    recs = json.loads(pool.read_text())
    recs = [recs[0], recs[2], recs[0] | {"id": "g2"}]  # good, wide, good
    p2 = tmp_path / "p2.json"
    p2.write_text(json.dumps(recs))
    with pytest.raises(PoolError, match="wide.png"):
        extract_activations(tiny_qwen2vl, p2, tmp_path / "fail", images=img, layers=[0], progress=False,
                            device="cpu")
    extract_activations(tiny_qwen2vl, p2, tmp_path / "ok", images=img, layers=[0], skip_bad=True, progress=False,
                        device="cpu")
    assert FeatureStore.open(tmp_path / "ok").missing().tolist() == [False, True, False]
