"""The selection contract shared by every method: budgets, parameters, roles, the registry and ``Selection``.

A method is a pure function ``(inputs, tasks, budgets, *, seed, strict_official, **params) -> list[Selection]``:
arrays in, indices out. It never loads a model or touches a file (DESIGN.md, "the one rule").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from vlselect.errors import SelectionError

# --------------------------------------------------------------------------------------------------- budgets


@dataclass(frozen=True)
class Budget:
    """A resolved budget for a pool of ``n`` rows.

    ``fraction`` is exact when the user gave a fraction (methods whose official code computes with ``p * N``,
    such as TIVE, use it as given); ``count`` is ``int(fraction * n)`` (floor, as the official scripts do) or the
    count the user gave.
    """

    count: int
    fraction: float
    n: int
    given: str

    @property
    def label(self) -> str:
        """A stable folder-friendly name: ``frac0.2`` or ``n4000``."""
        return f"frac{self.given}" if self.given_as_fraction else f"n{self.count}"

    @property
    def given_as_fraction(self) -> bool:
        return "." in self.given or "e" in self.given.lower()


def resolve_budget(budget: int | float | str, n: int) -> Budget:
    """Turn a user budget into a :class:`Budget` for a pool of ``n`` rows.

    A float or a string with a decimal point (``0.2``, ``"0.15"``, ``"1.0"``) is a fraction of the pool in
    ``(0, 1]``; an int or an integer string (``"4000"``) is a count in ``[1, n]``. Anything else, or a count larger
    than the pool, raises :class:`SelectionError`.
    """
    given = str(budget).strip()
    if isinstance(budget, bool):
        raise SelectionError(f"budget {budget!r} is not a fraction or a count")
    try:
        is_fraction = isinstance(budget, float) or ("." in given or "e" in given.lower())
        value = float(given) if is_fraction else int(given)
    except ValueError:
        raise SelectionError(
            f"budget {given!r} is neither a fraction (e.g. 0.2) nor a count (e.g. 4000)"
        ) from None
    if is_fraction:
        if not (0.0 < value <= 1.0) or not math.isfinite(value):
            raise SelectionError(
                f"budget fraction {given} is outside (0, 1]; give a fraction such as 0.2 or a count such as 4000"
            )
        return Budget(count=int(value * n), fraction=float(value), n=n, given=given)
    if value < 1:
        raise SelectionError(f"budget count {given} must be at least 1")
    if value > n:
        raise SelectionError(
            f"budget {value} is larger than the pool ({n} rows); give at most {n} or a fraction such as 0.2"
        )
    return Budget(count=int(value), fraction=value / n if n else 0.0, n=n, given=given)


def parse_budgets(text: str | int | float | Sequence[int | float | str], n: int) -> list[Budget]:
    """Resolve one budget or a comma-separated list (``"0.05,0.1,0.2"``) of them."""
    items = text.split(",") if isinstance(text, str) else ([text] if isinstance(text, (int, float)) else list(text))
    items = [i for i in items if str(i).strip()]
    if not items:
        raise SelectionError("no budget given; use e.g. --budget 0.2 or --budget 0.05,0.1,0.2")
    return [resolve_budget(i, n) for i in items]


# ---------------------------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Param:
    """One method parameter: the official script's name, its default, its type, and informal aliases."""

    name: str
    default: Any
    type: Callable[[str], Any]
    help: str
    aliases: tuple[str, ...] = ()
    choices: tuple[Any, ...] | None = None

    def convert(self, value: Any) -> Any:
        if isinstance(value, str):
            if self.type is bool:
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    value = True
                elif low in ("0", "false", "no", "off"):
                    value = False
                else:
                    raise SelectionError(f"parameter {self.name}={value!r}: expected true or false")
            elif self.default is None and value.strip().lower() in ("none", "null", ""):
                value = None
            else:
                try:
                    value = self.type(value)
                except (TypeError, ValueError):
                    raise SelectionError(
                        f"parameter {self.name}={value!r}: expected a value of type {self.type.__name__}"
                    ) from None
        if self.choices is not None and value not in self.choices:
            raise SelectionError(f"parameter {self.name}={value!r}: choose one of {', '.join(map(str, self.choices))}")
        return value


@dataclass(frozen=True)
class Role:
    """An input a method reads. ``name`` may end in ``/*`` (e.g. ``val/*``: one array per target task).

    ``aligned`` roles have one row per pool row; others (validation gradients) do not. ``checks_finite``: the
    method finds and excludes this input's NaN/inf rows itself, inside its own pass over it (reported in
    ``info["excluded_rows"]``), so :func:`vlselect.select.run_method` does not scan it first: one read fewer of a
    large memmap (issue 14).
    """

    name: str
    help: str
    required: bool = True
    aligned: bool = True
    checks_finite: bool = False

    def matches(self, role: str) -> bool:
        if self.name.endswith("/*"):
            return role.startswith(self.name[:-1]) and len(role) > len(self.name) - 1
        return role == self.name


# ---------------------------------------------------------------------------------------------- selection


@dataclass
class Selection:
    """The result of one method at one budget.

    Attributes
    ----------
    indices:
        int64 row indices into the pool, in priority order (most wanted first, or the official output order in
        strict mode). Unique unless the method documents repeats (TIVE's whole-task copies in strict mode).
    scores:
        float64 per pool row (length n); the method's per-sample score, NaN where a row was not scored; or None.
    method, budget, params, seed, strict_official:
        What produced it (params are the resolved values, defaults included).
    info:
        Intermediates and notes worth keeping (JSON-serialisable): shortfalls, excluded rows, per-cluster budgets.
    """

    indices: np.ndarray
    scores: np.ndarray | None
    method: str
    budget: Budget
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    strict_official: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.indices = np.asarray(self.indices, dtype=np.int64)

    @property
    def count(self) -> int:
        return int(self.indices.shape[0])

    @property
    def shortfall(self) -> int:
        """How many rows fewer than the budget asked for (0 when the budget is met)."""
        return max(0, self.budget.count - self.count)


MethodFn = Callable[..., list[Selection]]


@dataclass(frozen=True)
class MethodInfo:
    name: str
    fn: MethodFn
    roles: tuple[Role, ...]
    params: tuple[Param, ...]
    summary: str
    needs_tasks: bool = False
    reference: str = ""

    def param(self, name: str) -> Param:
        for p in self.params:
            if name == p.name or name in p.aliases:
                return p
        known = ", ".join(p.name + (f" ({'/'.join(p.aliases)})" if p.aliases else "") for p in self.params)
        raise SelectionError(f"method {self.name!r} has no parameter {name!r}; its parameters are: {known or 'none'}")

    def resolve_params(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults overlaid with ``given`` (official names or aliases), converted and validated."""
        out = {p.name: p.default for p in self.params}
        seen: dict[str, str] = {}
        for key, value in (given or {}).items():
            p = self.param(key)
            if p.name in seen:
                raise SelectionError(f"parameter {p.name} given twice (as {seen[p.name]} and {key})")
            seen[p.name] = key
            out[p.name] = p.convert(value)
        return out

    def role_for(self, role: str) -> Role:
        for r in self.roles:
            if r.matches(role):
                return r
        raise SelectionError(
            f"method {self.name!r} reads no input role {role!r}; its roles are: {', '.join(r.name for r in self.roles)}"
        )


REGISTRY: dict[str, MethodInfo] = {}


def register_method(
    name: str,
    *,
    roles: Sequence[Role],
    params: Sequence[Param] = (),
    summary: str,
    needs_tasks: bool = False,
    reference: str = "",
) -> Callable[[MethodFn], MethodFn]:
    """Decorator that adds a method to :data:`REGISTRY` under ``name``."""

    def deco(fn: MethodFn) -> MethodFn:
        if name in REGISTRY:
            raise RuntimeError(f"selection method {name!r} registered twice")
        REGISTRY[name] = MethodInfo(name, fn, tuple(roles), tuple(params), summary, needs_tasks, reference)
        return fn

    return deco


def stable_order(scores: np.ndarray, *, descending: bool = True) -> np.ndarray:
    """Row indices sorted by score, ties broken by original index (the documented secondary key).

    NaN scores go last in either direction.
    """
    s = np.asarray(scores, dtype=np.float64)
    key = np.where(np.isnan(s), np.inf, -s if descending else s)
    return np.lexsort((np.arange(s.shape[0]), key)).astype(np.int64)
