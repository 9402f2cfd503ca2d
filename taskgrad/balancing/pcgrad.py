"""PCGrad: project away conflicting components of task gradients."""

from __future__ import annotations

from taskgrad.balancing.base import STRATEGIES, Balance, TaskGradStats, combination_weights
from taskgrad.balancing.surgery import Surgery


@STRATEGIES.register("pcgrad")
class PCGrad(Surgery):
    r"""PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning").

    For each task i, in turn for each other task j (random order): if <g_i', g_j> < 0, project
    g_i' onto the normal plane of g_j, g_i' <- g_i' - <g_i', g_j> / ||g_j||^2 g_j. The update is
    sum_i g_i'. It acts on the tasks' own gradients g_k (each task's objective counted once, as in
    the paper), expressed as coefficients on g_k and normalised to sum 1 (base.py); with no
    conflict the update is therefore the equal-task mix sum_k g_k / K, not the plain mix.

    Departures: the normalisation (the paper's sum has K times the mean's scale, which AdamW
    mostly undoes); ``order="fixed"`` (task index order) is offered besides the paper's random
    order, which is seeded from ``seed`` and the call count in the state. Projections use the
    sample Gram, since they remove components of the sampled vectors themselves; a task with an
    all-zero gradient is left out.
    """

    name = "pcgrad"

    def __call__(self, s: TaskGradStats) -> Balance:
        a, projections = self._solve(s, self._orders(), None)
        return Balance(combination_weights(a, s.shares), info={"projections": float(projections)})
