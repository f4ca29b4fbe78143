"""Analysis tools: oversmoothing measures on the spatio-temporal graph."""
from .oversmoothing import (
    dirichlet_energy,
    effective_rank,
    mad,
    numerical_rank,
    oversmoothing_measures,
    pairwise_cosine,
)

__all__ = ["dirichlet_energy", "mad", "pairwise_cosine", "effective_rank", "numerical_rank",
           "oversmoothing_measures"]
