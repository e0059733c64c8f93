"""vlselect: data selection for visual instruction tuning.

Layers (see DESIGN.md): ``pool`` → ``features`` → ``select`` → export → ``train`` → ``evaluate`` → ``report``.
Selection methods are pure functions of arrays and metadata; they never load a model or touch a file.
"""

from vlselect.errors import VlselectError

__version__ = "0.1.0"
__all__ = ["VlselectError", "__version__"]
