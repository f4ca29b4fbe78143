"""Small helpers shared across taggnn."""
from .optional import has_torch_scatter, has_torch_sparse, require_torch_sparse

__all__ = ["has_torch_scatter", "has_torch_sparse", "require_torch_sparse"]
