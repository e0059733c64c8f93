"""Evaluation: running a model on evaluation sets (greedy generation), metrics, relative performance against a
reference, intervals over seeds, and the lmms-eval bridge.

Public API: :func:`evaluate`, :func:`summarize`, :func:`generate_answers`, :func:`read_eval_set`,
:mod:`vlselect.evaluate.metrics`, :func:`lmms_eval_command`.
"""

from __future__ import annotations

from vlselect.evaluate.lmms import lmms_eval_command
from vlselect.evaluate.metrics import mean_interval, relative_performance, score_set
from vlselect.evaluate.run import evaluate, generate_answers, summarize
from vlselect.evaluate.sets import EvalSet, EvalSetError, read_eval_set

__all__ = ["EvalSet", "EvalSetError", "evaluate", "generate_answers", "lmms_eval_command", "mean_interval",
           "read_eval_set", "relative_performance", "score_set", "summarize"]
