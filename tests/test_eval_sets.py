"""An evaluation set used as a target task's validation set (ICONS / LESS gradients)."""

from __future__ import annotations

import json

from vlselect.evaluate.sets import eval_set_as_samples, looks_like_eval_set


def test_eval_set_becomes_question_answer_samples(tmp_path):
    es = {"name": "color", "metric": "exact_match", "samples": [
        {"id": "c0", "image": "eval_color_0000.png", "question": "What colour is the circle?", "answers": ["red", "Red"]},
        {"id": "c1", "question": "What is 2+2?", "answers": ["4"]},
    ]}
    f = tmp_path / "color.json"
    f.write_text(json.dumps(es, indent=1))
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps([{"id": "a", "conversations": [{"from": "human", "value": "hi"},
                                                                {"from": "gpt", "value": "yo"}]}]))
    assert looks_like_eval_set(f) and not looks_like_eval_set(pool)
    s = eval_set_as_samples(f)
    assert [x.id for x in s] == ["c0", "c1"] and all(x.task == "color" for x in s)
    assert s[0].images == ["eval_color_0000.png"] and s[1].images == []
    assert s[0].conversations == [{"from": "human", "value": "<image>\nWhat colour is the circle?"},
                                  {"from": "gpt", "value": "red"}]
    assert s[1].conversations[0]["value"] == "What is 2+2?"
