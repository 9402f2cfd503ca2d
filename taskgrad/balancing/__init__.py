"""Balancing strategies: pure functions of per-task gradient statistics -> task weights.

One strategy per module, each registered in ``STRATEGIES`` where it is defined; the registry
imports this package's modules (and ``experimental/``) the first time a name is looked up, so a
new strategy is one new file. Shared pieces: ``base`` (what a strategy sees and returns),
``common`` (smoothed norms, masks, a tiny Adam), ``solvers`` (exact small QPs on the Gram),
``surgery`` (PCGrad's projection orders).
"""

from taskgrad.balancing.base import STRATEGIES, Balance, Strategy, TaskGradStats

__all__ = ["STRATEGIES", "Balance", "Strategy", "TaskGradStats"]
