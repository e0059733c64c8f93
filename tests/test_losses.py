"""One per-sample loss (issue 11): mean answer-token cross-entropy, NaN for an empty answer, zero gradient there;
used by the gradients and the loss/EL2N/perplexity arrays alike, and NaN rows are never selected downstream."""

from __future__ import annotations

import math

import numpy as np
import torch

from vlselect.features import gradients, losses
from vlselect.select import REGISTRY, resolve_budget


def _case():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[-100, 3, -100, 1], [-100, -100, -100, -100]])  # row 1: no answer token
    return logits, labels


def _by_hand(logits, labels, row):
    """mean of -log softmax(logits[t])[labels[t+1]] over supervised t+1, computed term by term."""
    terms = []
    for t in range(labels.shape[1] - 1):
        y = int(labels[row, t + 1])
        if y != -100:
            z = logits[row, t].double()
            terms.append(-(z[y] - math.log(float(torch.exp(z).sum()))))
    return sum(terms) / len(terms) if terms else float("nan")


def test_the_gradients_use_the_one_definition():
    assert gradients.per_sample_loss is losses.per_sample_loss


def test_loss_is_the_mean_answer_token_ce_and_nan_for_an_empty_answer():
    logits, labels = _case()
    loss, counts = losses.per_sample_loss(logits, labels)
    assert counts.tolist() == [2, 0]
    assert math.isclose(float(loss[0]), _by_hand(logits, labels, 0), rel_tol=1e-6)
    assert math.isnan(float(loss[1]))
    full = losses.losses_from_logits(logits, labels)
    assert math.isclose(float(full["loss"][0]), float(loss[0]), rel_tol=1e-7) and math.isnan(float(full["loss"][1]))
    assert math.isnan(float(full["el2n"][1])) and math.isnan(float(full["perplexity"][1]))


def test_hidden_path_agrees_including_the_empty_answer():
    torch.manual_seed(1)
    hidden = torch.randn(2, 4, 3)
    head = torch.nn.Linear(3, 5, bias=False)
    _, labels = _case()
    with torch.no_grad():
        a = losses.losses_from_hidden(hidden, labels, head)
        b = losses.losses_from_logits(head(hidden), labels)
    for k in ("loss", "perplexity", "el2n"):
        torch.testing.assert_close(a[k], b[k], equal_nan=True, rtol=1e-5, atol=1e-6)
    assert math.isnan(float(a["loss"][1]))


def test_an_empty_answer_has_a_zero_gradient_not_nan():
    logits, labels = _case()
    logits = logits.clone().requires_grad_(True)
    loss, _ = losses.per_sample_loss(logits, labels)
    (g,) = torch.autograd.grad(torch.nansum(loss), logits)
    assert torch.isfinite(g).all()
    assert float(g[1].abs().sum()) == 0.0 and float(g[0].abs().sum()) > 0


def test_single_score_baselines_never_select_unscored_rows_even_when_called_directly():
    v = np.array([0.5, np.nan, 0.1, 0.3, np.nan, 0.2, 0.4])
    b = resolve_budget(3, 7)
    el2n = REGISTRY["el2n"].fn
    assert el2n({"el2n": v}, None, [b])[0].indices.tolist() == [2, 5, 3]
    assert el2n({"el2n": v}, None, [b], prune_subset="top")[0].indices.tolist() == [0, 6, 3]
    # middle of the 5 scored rows (ascending 2, 5, 3, 6, 0): start 5 // 2 - 3 // 2 = 1
    assert el2n({"el2n": v}, None, [b], prune_subset="middle")[0].indices.tolist() == [5, 3, 6]
    ppl = REGISTRY["perplexity"].fn({"losses": v}, None, [b], prune_subset="top")[0]
    assert ppl.indices.tolist() == [0, 6, 3] and ppl.info["unscored_rows"] == 2
