"""The package's one per-sample loss, with perplexity and EL2N over the answer tokens (coincide.md §7.2; the EL2N /
perplexity baselines; icons.md §2.2 and tive.md §4.2 for the gradients).

Definitions (per sample, over its supervised positions t, i.e. ``labels[t+1] != -100`` after the causal shift):

- ``loss``       = mean_t CE(logits_t, y_{t+1}) — the language-model loss of the answer tokens (natural log);
  :func:`per_sample_loss` is its one definition, used by the activation extractor's ``loss`` array and by the
  per-sample gradients (:mod:`vlselect.features.gradients`);
- ``perplexity`` = exp(loss);
- ``el2n``       = mean_t ‖softmax(logits_t) − onehot(y_{t+1})‖₂ over the full vocabulary (spec §7.2).

A sample without any supervised token (an empty answer) gets NaN for all three: it has no loss, not a loss of 0.
Downstream, NaN rows are excluded: :func:`vlselect.select.run_method` leaves rows holding NaN out of every method,
and the EL2N / perplexity baselines order only the finite rows. The gradient of such a sample is zero (the NaN is
put in with ``torch.where``, so no NaN reaches the backward pass; sum the losses with ``torch.nansum``).

Computed in float32 whatever the model dtype. :func:`losses_from_hidden` applies the output head to the
supervised positions only (memory O(answer tokens × vocabulary), never O(batch × sequence × vocabulary)); it
computes the same values as :func:`losses_from_logits` (tested).
"""

from __future__ import annotations

IGNORE_INDEX = -100


def per_sample_loss(logits, labels):
    """The per-sample loss: mean next-token cross-entropy over the sample's supervised tokens; NaN when it has none.

    Parameters
    ----------
    logits : torch.Tensor
        ``(b, T, V)`` model outputs (any float dtype; computed in float32).
    labels : torch.Tensor
        ``(b, T)`` token ids, -100 where unsupervised (system, user turns, image tokens, padding).

    Returns
    -------
    (losses, counts)
        ``losses`` ``(b,)`` float32, NaN for a sample without a supervised token (the official code's value too:
        icons.md §2.2, quirk Q15); ``counts`` ``(b,)`` the number of supervised tokens. Differentiable: an empty
        sample contributes a zero gradient to ``torch.nansum(losses)``.

    References
    ----------
    icons.md §2.2, tive.md §4.2 (HF causal-LM loss, batch size 1); coincide.md §7.2.
    """
    import torch
    import torch.nn.functional as F

    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:].to(shift_logits.device)
    ce = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=IGNORE_INDEX, reduction="none")
    counts = (shift_labels != IGNORE_INDEX).sum(dim=1)
    mean = ce.sum(dim=1) / counts.clamp(min=1)
    return torch.where(counts > 0, mean, torch.full_like(mean, float("nan"))), counts


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
    """The same three values from full logits (B, T, V): ``loss`` is :func:`per_sample_loss`."""
    import torch

    mask, targets = supervised_positions(labels)
    rows = torch.nonzero(mask)[:, 0]
    _, e = token_losses(logits[mask], targets)
    B = labels.shape[0]
    loss, _ = per_sample_loss(logits, labels)
    loss = loss.detach().float().cpu()
    return {"loss": loss, "perplexity": torch.exp(loss), "el2n": per_sample_losses(e.cpu(), rows.cpu(), B)}
