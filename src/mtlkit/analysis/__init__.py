"""Task relatedness and task grouping.

- :func:`measure_affinity`: gradient cosines, conflict shares and the
  lookahead inter-task affinity (TAG) of every ordered task pair, during a short training run;
- :func:`best_grouping`: which tasks to train together in at most k models;
- :func:`grouping_robustness`: how often that answer survives bootstrap resamples of the
  measured steps.
"""

from mtlkit.analysis.affinity import (
    Affinity,
    gradient_cosines,
    lookahead_affinity,
    measure_affinity,
)
from mtlkit.analysis.grouping import (
    Grouping,
    Robustness,
    best_grouping,
    best_grouping_exact,
    best_grouping_heuristic,
    group_score,
    grouping_robustness,
    total_value,
)

__all__ = [
    "Affinity",
    "Grouping",
    "Robustness",
    "best_grouping",
    "best_grouping_exact",
    "best_grouping_heuristic",
    "gradient_cosines",
    "group_score",
    "grouping_robustness",
    "lookahead_affinity",
    "measure_affinity",
    "total_value",
]
