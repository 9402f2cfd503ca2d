"""Balancing strategies: pure functions of per-task gradient statistics -> task weights.

Importing this package registers every built-in strategy in ``STRATEGIES``: the baselines
(basic), norm balancing (norms), gradient surgery (surgery), Pareto-style aggregators (pareto),
scale-invariant bargaining (impartial), progress-driven weights (progress), a task curriculum
(curriculum) and new, not yet validated methods (experimental).
"""

from taskgrad.balancing import (  # noqa: F401  (imported to register)
    basic,
    curriculum,
    experimental,
    impartial,
    norms,
    pareto,
    progress,
    surgery,
)
from taskgrad.balancing.base import STRATEGIES, Balance, Strategy, TaskGradStats

__all__ = ["STRATEGIES", "Balance", "Strategy", "TaskGradStats"]
