"""Instruction pools: :class:`Sample`, readers and writers (LLaVA JSON/JSONL, Vision-Flan, DataOptim ids), task
inference, subset export and the pool fingerprint."""

from vlselect.pool.sample import Sample

__all__ = ["Sample"]
