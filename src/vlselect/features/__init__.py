"""Per-sample features: the :class:`FeatureStore` (sharded, resumable, rank-aware, mergeable), COINCIDE layer
activations, per-sample loss / perplexity / EL2N (and, from ``gradients.py`` / ``projection.py``, LoRA gradients
and random projections).

Arrays written by ``vlselect features activations`` (:mod:`vlselect.features.activations`):

``activations``
    (N, 2·L·H) float16, ``[v_1 | u_1 | … | v_L | u_L]`` (coincide.md §1.4); a text-only row has a zero vision half.
``has_image``
    (N,) uint8, 1 where the row had image tokens (text-only rows are flagged here, spec §1.5).
``loss``, ``perplexity``, ``el2n``
    (N,) float32, with ``--losses`` (spec §7.2); NaN for a row without answer tokens or recorded missing.
``embed_last``, ``embed_mean``, ``margin``
    with ``--embeddings`` (:mod:`vlselect.features.embeddings`): SemDeDup's and D2-Pruning's inputs (spec §7.1, §7.3,
    §7.4). The training-dynamics AUM is written by ``vlselect train --record-dynamics``
    (:mod:`vlselect.features.dynamics`).

Rows recorded missing (``--skip-bad``) are listed in ``manifest["missing_rows"]`` and ``FeatureStore.missing()``.
"""

from vlselect.features.store import FeatureStore, Shard, merge, parse_shard

__all__ = ["FeatureStore", "Shard", "merge", "parse_shard"]
