"""Small helpers shared across taggnn: optional packages (``optional``), lock files (``lockfile``), outputs
that never replace a file by surprise (``outputs``), file identification for messages (``identify``), memory
(``memory``) and the version number (``version``)."""
from .optional import has_torch_scatter, has_torch_sparse, require_torch_sparse

__all__ = ["has_torch_scatter", "has_torch_sparse", "require_torch_sparse"]
