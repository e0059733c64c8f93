"""Per-sample loss, perplexity and EL2N over the answer tokens (coincide.md §7.2; the EL2N / perplexity baselines).

Definitions (per sample, over its supervised positions t, i.e. ``labels[t+1] != -100`` after the causal shift):

- ``loss``       = mean_t CE(logits_t, y_{t+1}) — the language-model loss of the answer tokens (natural log);
- ``perplexity`` = exp(loss);
- ``el2n``       = mean_t ‖softmax(logits_t) − onehot(y_{t+1})‖₂ over the full vocabulary (spec §7.2).

A sample without any supervised token gets NaN for all three (and the extractor records it). Computed in float32
whatever the model dtype. Only the supervised positions go through the output head, so memory is
O(answer tokens × vocabulary), never O(batch × sequence × vocabulary).
"""

from __future__ import annotations

IGNORE_INDEX = -100


def supervised_positions(labels):
    """Boolean mask (B, T) of positions whose *next* label is supervised, and the targets at those positions."""
    import torch

    nxt = torch.full_like(labels, IGNORE_INDEX)
    nxt[:, :-1] = labels[:, 1:]
    mask = nxt != IGNORE_INDEX
    return mask, nxt[mask]


def token_losses(logits, targets):
    """Cross-entropy and EL2N per token from float logits (N, V) and targets (N,). Returns two float32 (N,)."""
    import torch

    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    ce = -logp.gather(1, targets[:, None])[:, 0]
    p = logp.exp()
    # ||p - onehot(y)||² = Σ p² - 2 p_y + 1
    py = p.gather(1, targets[:, None])[:, 0]
    el2n = torch.sqrt(torch.clamp((p * p).sum(-1) - 2 * py + 1, min=0))
    return ce, el2n


def per_sample_losses(token_values, row_of_token, n_rows):
    """Average per-token values into per-row means; rows with no token get NaN. Returns float32 (n_rows,)."""
    import torch

    sums = torch.zeros(n_rows, dtype=torch.float64)
    counts = torch.zeros(n_rows, dtype=torch.float64)
    sums.index_add_(0, row_of_token, token_values.double())
    counts.index_add_(0, row_of_token, torch.ones_like(token_values, dtype=torch.float64))
    out = sums / counts
    out[counts == 0] = float("nan")
    return out.float()


def losses_from_hidden(hidden, labels, head):
    """Per-sample ``loss``, ``perplexity`` and ``el2n`` from last hidden states (B, T, H) and labels (B, T).

    Parameters
    ----------
    hidden : torch.Tensor
        The language model's final hidden states (after the final norm).
    labels : torch.Tensor
        -100 except on answer tokens (:func:`vlselect.models.encode_sample`).
    head : callable
        The output head (``model.get_output_embeddings()``), applied only at supervised positions.

    Returns
    -------
    dict of str to torch.Tensor
        ``loss``, ``perplexity``, ``el2n``: float32 (B,).
    """
    import torch

    mask, targets = supervised_positions(labels)
    rows = torch.nonzero(mask)[:, 0]
    logits = head(hidden[mask])
    ce, e = token_losses(logits, targets.to(logits.device))
    B = labels.shape[0]
    loss = per_sample_losses(ce.cpu(), rows.cpu(), B)
    return {"loss": loss, "perplexity": torch.exp(loss), "el2n": per_sample_losses(e.cpu(), rows.cpu(), B)}


def losses_from_logits(logits, labels):
    """The same three values from full logits (B, T, V) — the plain definition, used by tests as a reference."""
    import torch

    mask, targets = supervised_positions(labels)
    rows = torch.nonzero(mask)[:, 0]
    ce, e = token_losses(logits[mask], targets)
    B = labels.shape[0]
    loss = per_sample_losses(ce, rows, B)
    return {"loss": loss, "perplexity": torch.exp(loss), "el2n": per_sample_losses(e, rows, B)}
