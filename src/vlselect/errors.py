"""The error hierarchy. Every error a user can cause is a :class:`VlselectError` whose message names the file,
the record and the fix; the CLI prints it without a traceback and exits with code 2."""

from __future__ import annotations


class VlselectError(Exception):
    """Base class of every user-facing error. ``str(err)`` is the whole message shown to the user."""


class PoolError(VlselectError):
    """A pool file is missing, malformed, or holds a bad record."""


class FeatureError(VlselectError):
    """A feature store or array is missing, corrupt, or does not match the pool."""


class ModelError(VlselectError):
    """A model directory cannot be loaded or does not fit the requested operation."""


class SelectionError(VlselectError):
    """Bad input to a selection method: unknown parameter, bad budget, misaligned arrays."""


class ConfigError(VlselectError):
    """A bad option value or combination of options."""


class MissingDependencyError(VlselectError):
    """An optional dependency is missing; the message says which ``pip install`` fixes it."""


def missing_dependency(package: str, extra: str | None = None, purpose: str = "") -> MissingDependencyError:
    """Build the error for a missing optional dependency, naming the install command that fixes it."""
    fix = f"pip install 'vlselect[{extra}]'" if extra else f"pip install {package}"
    what = f" (needed for {purpose})" if purpose else ""
    return MissingDependencyError(f"the package '{package}' is not installed{what}; install it with: {fix}")
