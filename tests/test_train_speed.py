"""The two training speed-ups: LoRA dropout with a PCG64 mask (vlselect.train.dropout) and length-grouped steps
(vlselect.train.data.global_schedule with length_group). Checked against hand-worked values and against
properties that hold whatever the random draws are."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlselect.train.data import epoch_order, global_schedule
from vlselect.train.dropout import PcgDropout, drop_threshold, keep_mask, use_pcg_dropout


def test_drop_threshold_rounds_p_to_sixteen_bits():
    # 0.05 * 65536 = 3276.8 -> 3277; 0.5 -> 32768; 0 and 1 exactly
    assert [drop_threshold(p) for p in (0.05, 0.5, 0.0, 1.0)] == [3277, 32768, 0, 65536]
    with pytest.raises(ValueError, match="not in"):
        drop_threshold(1.5)


def test_keep_mask_drops_p_and_scales_the_rest_exactly():
    torch.manual_seed(0)
    m = keep_mask((1000, 2000), 0.05).numpy()
    dropped = float((m == 0).mean())
    p = 3277 / 65536
    sigma = (p * (1 - p) / m.size) ** 0.5
    assert abs(dropped - p) < 5 * sigma  # 2e6 independent draws
    kept = np.unique(m[m != 0])
    assert kept.tolist() == [np.float32(65536 / 62259)]  # 1 / (1 - 3277/65536), hand-computed
    assert abs(float(m.mean()) - 1.0) < 5 * sigma * 65536 / 62259  # the expectation is kept
    # neighbouring elements are not correlated (a mask built from a bad bit stream would be)
    a, b = (m[:, :-1] == 0).ravel(), (m[:, 1:] == 0).ravel()
    assert abs(float((a & b).mean()) - p * p) < 5 * (p * p / a.size) ** 0.5


def test_masks_follow_torch_seed_and_train_mode():
    x = torch.randn(4, 7, 16)
    d = PcgDropout(0.3).train()
    torch.manual_seed(1)
    y1 = d(x)
    torch.manual_seed(1)
    y2 = d(x)
    y3 = d(x)
    assert torch.equal(y1, y2) and not torch.equal(y2, y3)
    assert not torch.equal(y1, x)
    assert torch.equal(d.eval()(x), x) and torch.equal(PcgDropout(0.0).train()(x), x)
    # the gradient is the mask: d(sum y)/dx = y / x where kept, 0 where dropped
    xg = (torch.rand(3, 5, 8) + 0.5).requires_grad_()
    y = d.train()(xg)
    y.sum().backward()
    assert torch.allclose(xg.grad, y.detach() / xg.detach())
    values = torch.unique(xg.grad)
    assert values.tolist() == [0.0, pytest.approx(65536 / (65536 - drop_threshold(0.3)))]


def test_use_pcg_dropout_replaces_peft_dropouts_only():
    from peft import LoraConfig, get_peft_model

    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4), torch.nn.Dropout(0.1))
    pm = get_peft_model(net, LoraConfig(r=2, lora_alpha=4, lora_dropout=0.05, target_modules=["0", "2"]))
    before = {k: v.clone() for k, v in pm.state_dict().items()}
    x = torch.randn(5, 8)
    pm.eval()
    y0 = pm(x)
    assert use_pcg_dropout(pm) == 2
    assert isinstance(pm.base_model.model[3], torch.nn.Dropout)  # the model's own dropout is not LoRA's
    drops = [m for m in pm.modules() if isinstance(m, PcgDropout)]
    assert len(drops) == 2 and all(d.p == 0.05 for d in drops)
    assert all(torch.equal(before[k], v) for k, v in pm.state_dict().items())
    assert torch.equal(pm(x), y0)


def test_length_grouped_steps_hand_worked():
    # 8 positions, 2 per step, groups of 2 steps: each group of 4 (in the epoch's shuffled order) is sorted by
    # length, longest first, and cut into its 2 steps; the steps of a group come in a seeded order
    lengths = [5, 1, 7, 3, 2, 8, 4, 6]
    order = epoch_order(8, 0, 0).tolist()
    plan = global_schedule(8, epochs=1, batch_size=2, grad_accum=1, world_size=1, seed=0, lengths=lengths,
                           length_group=2)
    for g in range(2):
        group = sorted(order[4 * g : 4 * g + 4], key=lambda i: -lengths[i])
        assert sorted(map(sorted, plan[2 * g : 2 * g + 2])) == sorted([sorted(group[:2]), sorted(group[2:])])
    # without grouping: the shuffled order cut into steps, as before
    plain = global_schedule(8, epochs=1, batch_size=2, grad_accum=1, world_size=1, seed=0)
    assert plain == [order[i : i + 2] for i in range(0, 8, 2)]
    with pytest.raises(ValueError, match="one length per position"):
        global_schedule(8, epochs=1, batch_size=2, grad_accum=1, world_size=1, seed=0, length_group=2)


def test_length_grouped_steps_cover_every_position_and_cut_padding():
    rng = np.random.default_rng(3)
    n, bs = 1000, 32
    lengths = rng.integers(30, 110, n)
    plan = global_schedule(n, epochs=2, batch_size=bs, grad_accum=1, world_size=1, seed=7, lengths=lengths,
                           length_group=4)
    steps_per_epoch = -(-n // bs)
    for e in range(2):
        epoch = plan[e * steps_per_epoch : (e + 1) * steps_per_epoch]
        assert sorted(i for st in epoch for i in st) == list(range(n))

    def padding(steps):
        return 1 - sum(lengths[st].sum() for st in steps) / sum(len(st) * lengths[st].max() for st in steps)

    plain = global_schedule(n, epochs=2, batch_size=bs, grad_accum=1, world_size=1, seed=7)
    assert padding(plan) < 0.6 * padding(plain)
    again = global_schedule(n, epochs=2, batch_size=bs, grad_accum=1, world_size=1, seed=7, lengths=lengths,
                            length_group=4)
    assert again == plan


def test_a_pool_read_again_is_the_same_until_its_file_changes(tmp_path):
    """open_training_pool keeps the last pool read from a path (the bench's workers train ~70 subsets of one pool):
    the same path gives the same Pool while the file is unchanged, and a rewritten file is read again."""
    import json
    import os

    from vlselect.train.data import open_training_pool

    def write(answers):
        recs = [{"id": f"r{i}", "conversations": [{"from": "human", "value": "Say it."}, {"from": "gpt", "value": a}]}
                for i, a in enumerate(answers)]
        path.write_text(json.dumps(recs))

    path = tmp_path / "pool.json"
    write(["one", "two"])
    first = open_training_pool(path)
    assert open_training_pool(str(path)) is first and len(first) == 2
    write(["uno", "dos", "tres"])
    again = open_training_pool(path)
    assert again is not first and len(again) == 3 and again[2].conversations[1]["value"] == "tres"
    # same size, a new modification time: read again, not served from the old byte offsets
    write(["ein", "zwo", "drei"])
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = open_training_pool(path)
    assert third is not again and third[0].conversations[1]["value"] == "ein"
