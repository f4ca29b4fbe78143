"""Analysis tools: oversmoothing measures (:mod:`~taggnn.analysis.oversmoothing`), how much the graph stage
reaches the classifier (:mod:`~taggnn.analysis.readout`), and paired statistics over seeds
(:mod:`~taggnn.analysis.stats`)."""
from .oversmoothing import (
    dirichlet_energy,
    effective_rank,
    mad,
    numerical_rank,
    oversmoothing_measures,
    pairwise_cosine,
)
from .readout import graph_sensitivity, pooled_token_weights
from .stats import (
    holm_adjust,
    minimum_detectable_difference,
    paired_difference,
    paired_p_value,
    paired_power,
    seeds_needed,
    summarize,
)

__all__ = ["dirichlet_energy", "mad", "pairwise_cosine", "effective_rank", "numerical_rank",
           "oversmoothing_measures", "pooled_token_weights", "graph_sensitivity", "summarize",
           "paired_difference", "paired_p_value", "holm_adjust", "paired_power", "minimum_detectable_difference",
           "seeds_needed"]
