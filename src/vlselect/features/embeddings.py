"""The inputs of the SemDeDup and D2-Pruning baselines (coincide.md §7.1, §7.3, §7.4), from one forward pass.

``vlselect features activations --embeddings`` adds three arrays to the store, all from the language model's
**last hidden state after the final norm** (what ``d2_prune/score_embed.py`` and ``score_aum.py`` read):

``embed_last``
    (N, H) float16: the hidden state at the row's **last token** — SemDeDup's embedding (``score_embed.py``
    without ``--avg_embed``).
``embed_mean``
    (N, H) float16: the mean of the hidden states over the row's tokens (image tokens included) — D2-Pruning's
    embedding (``score_embed.py --avg_embed``).
``margin``
    (N,) float32: at each supervised answer token (``labels != -100`` after the causal shift) the probability
    margin ``p_y - max_{k != y} p_k`` over the full vocabulary, averaged over the row's answer tokens — the
    importance score ``score_aum.py`` gives D2-Pruning (one checkpoint, probabilities; higher = easier). NaN for a
    row without answer tokens.

Differences from the official code, deliberate (spec §7.1, §7.4): the official "last token" is the last position
of the right-padded **batch** (a padding position for every row but the longest) and the official mean runs over
all positions of the padded batch; here both use the row's own tokens (``attention_mask``), so a row's embedding
does not depend on what else is in its batch. Pooling is done in float32 before the float16 store.

The training-dynamics AUM (the original definition: logit margins averaged over training) is
:mod:`vlselect.features.dynamics`.
"""

from __future__ import annotations

__all__ = ["EMBEDDING_ARRAYS", "embedding_arrays", "margins_per_sample", "pool_hidden", "token_margins"]

#: name → (width or None, dtype); width ``"hidden"`` is the model's hidden size
EMBEDDING_ARRAYS = {"embed_last": ("hidden", "float16"), "embed_mean": ("hidden", "float16"),
                    "margin": (None, "float32")}


def pool_hidden(hidden, attention_mask):
    """Last-token and mean pooling of hidden states over each row's own tokens.

    Parameters
    ----------
    hidden : torch.Tensor
        (B, T, H) last hidden states.
    attention_mask : torch.Tensor
        (B, T), 1 on the row's tokens, 0 on padding (left or right).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``last`` and ``mean``, each (B, H) float32; a row without tokens gets zeros.
    """
    import torch

    h = hidden.float()
    m = attention_mask.to(h.device) > 0
    B, T = m.shape
    pos = torch.arange(T, device=h.device).expand(B, T)
    last_pos = torch.where(m, pos, torch.full_like(pos, -1)).max(dim=1).values
    has = last_pos >= 0
    last = h[torch.arange(B, device=h.device), last_pos.clamp(min=0)] * has[:, None]
    mf = m.to(torch.float32)
    mean = torch.bmm(mf[:, None, :], h)[:, 0] / mf.sum(1, keepdim=True).clamp(min=1)
    return last, mean


def token_margins(logits, targets, *, probabilities: bool):
    """Per-token margin of the target over the strongest other class: ``v_y - max_{k != y} v_k``.

    ``v`` is ``softmax(logits)`` when ``probabilities`` (COINCIDE's ``score_aum.py``), the logits otherwise (the
    AUM of Pleiss et al.). ``logits`` (N, V), ``targets`` (N,); returns float32 (N,).
    """
    import torch

    v = logits.float()
    if probabilities:
        v = torch.softmax(v, dim=-1)
    assigned = v.gather(1, targets[:, None])[:, 0]
    others = v.scatter(1, targets[:, None], float("-inf")).max(dim=1).values
    return assigned - others


def margins_per_sample(logits, labels, *, probabilities: bool, head=None):
    """Per-row mean of :func:`token_margins` over the supervised tokens (labels after the causal shift).

    ``logits`` are (B, T, V) logits, or, with ``head``, (B, T, H) hidden states that ``head`` maps to logits at
    the supervised positions only. Returns float32 (B,), NaN for a row without supervised tokens.
    """
    import torch

    from vlselect.features.losses import per_sample_losses, supervised_positions

    mask, targets = supervised_positions(labels.to(logits.device))
    rows = torch.nonzero(mask)[:, 0]
    sel = logits[mask]
    if head is not None:
        sel = head(sel)
    tm = token_margins(sel, targets, probabilities=probabilities)
    return per_sample_losses(tm.detach().cpu(), rows.cpu(), labels.shape[0])


def embedding_arrays(hidden, attention_mask, labels, head) -> dict:
    """``embed_last``, ``embed_mean`` (B, H) and ``margin`` (B,) as float32 numpy arrays from one forward pass.

    Parameters
    ----------
    hidden : torch.Tensor
        (B, T, H) last hidden states after the final norm.
    attention_mask, labels : torch.Tensor
        (B, T), from :func:`vlselect.models.collate`.
    head : callable
        The output head (``model.get_output_embeddings()``), applied at supervised positions only.
    """
    last, mean = pool_hidden(hidden, attention_mask)
    margin = margins_per_sample(hidden, labels, probabilities=True, head=head)
    return {"embed_last": last.cpu().numpy(), "embed_mean": mean.cpu().numpy(), "margin": margin.numpy()}
