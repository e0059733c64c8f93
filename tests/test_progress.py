"""The one progress helper: plain lines with count, rate and time left when stderr is not a terminal (log files,
CI, nohup), silence for short work, and no FutureWarning from wrapping a model with PEFT."""

from __future__ import annotations

import io
import warnings

from fixtures_models import tiny_llava, write_pool  # noqa: F401

from vlselect.cli import main
from vlselect.progress import ProgressBar


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_lines_every_interval_with_rate_and_time_left():
    clock, out = FakeClock(), io.StringIO()
    with ProgressBar("train", unit="steps", interval=30, stream=out, clock=clock) as bar:
        task = bar.add_task("", total=400)
        clock.t += 10
        bar.update(task, advance=40, description="loss 2.5000")  # 10 s < 30 s: nothing yet
        assert out.getvalue() == ""
        clock.t += 20
        bar.update(task, advance=80, description="loss 2.1034")  # 120 steps in 30 s: 4/s, 280 left = 70 s
        clock.t += 70
        bar.update(task, advance=280)  # 100 s since the last line is past the interval too
    lines = out.getvalue().splitlines()
    assert lines == ["train loss 2.1034: 120/400 steps (30%) · 4.0 steps/s · 0:01:10 left",
                     "train loss 2.1034: 400/400 steps (100%) · 4.0 steps/s"]


def test_short_work_is_silent_and_disabled_is_silent():
    clock, out = FakeClock(), io.StringIO()
    with ProgressBar("gradients", interval=30, stream=out, clock=clock) as bar:
        t = bar.add_task("", total=8)
        clock.t += 5
        bar.advance(t, 8)
    with ProgressBar("gradients", enabled=False, interval=0, stream=out, clock=clock) as bar:
        t = bar.add_task("", total=8)
        clock.t += 5
        bar.advance(t, 8)
    assert out.getvalue() == ""


def test_redirected_world_make_logs_progress_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VLSELECT_PROGRESS_EVERY", "0")
    try:
        main(["world", "make", str(tmp_path / "w"), "--size", "200", "--eval-size", "4", "--image-size", "24"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    err = capsys.readouterr().err.splitlines()
    done = [ln for ln in err if ln.startswith("world: ") and "pictures (100%)" in ln]
    assert done, err
    n = int(done[0].split(": ")[1].split()[0])
    assert done[0].startswith(f"world: {n} pictures: {n}/{n} pictures (100%)")


def test_lora_training_emits_no_future_warning(tmp_path, tiny_llava, capsys):  # noqa: F811
    from vlselect.train import train_lora

    pool, images = write_pool(tmp_path / "p", n=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = train_lora(tiny_llava, pool, images, tmp_path / "run", r=4, lora_alpha=8, batch_size=2, max_steps=1,
                         progress=False)
    assert res.steps == 1
    future = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert future == []


def test_slow_work_reads_as_seconds_per_unit():
    clock, out = FakeClock(), io.StringIO()
    with ProgressBar("train", unit="steps", interval=0, stream=out, clock=clock) as bar:
        task = bar.add_task("", total=3)
        clock.t += 28
        bar.advance(task)  # one step in 28 s: 56 s left
    assert out.getvalue().splitlines()[0] == "train: 1/3 steps (33%) · 28.0 s/step · 0:00:56 left"
