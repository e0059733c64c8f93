"""less selection (see select/base.py for the contract). Filled in by its implementation."""
