"""Per-sample features: the :class:`FeatureStore` (sharded, resumable, rank-aware, mergeable), COINCIDE layer
activations, per-sample loss / perplexity / EL2N (and, from ``gradients.py`` / ``projection.py``, LoRA gradients
and random projections)."""

from vlselect.features.store import FeatureStore, Shard, merge, parse_shard

__all__ = ["FeatureStore", "Shard", "merge", "parse_shard"]
