"""Modular Gradient Surgery: PCGrad module kind by module kind."""

from __future__ import annotations

from taskgrad.balancing.base import STRATEGIES, Balance, TaskGradStats, combination_weights
from taskgrad.balancing.surgery import MODULE_KINDS, Surgery


@STRATEGIES.register("pcgrad_modular")
class PCGradModular(Surgery):
    r"""Modular Gradient Surgery (Cai et al. 2026, arXiv 2602.02301): PCGrad per module.

    Conflicts are resolved separately in each module kind ("attention", "mlp", "embeddings",
    "norms"), so that a conflict in one module no longer shrinks the update of all others: each
    kind gets its own PCGrad coefficients, returned as ``module_weights`` (normalised per kind as
    in base.py). Parameters outside these kinds get PCGrad on the whole scope (``task_weights``).
    The same random projection orders are used in every kind within one call.

    Departures: the paper partitions each transformer layer's modules; we pool each module kind
    across layers (the scopes the Gram capture provides), and only kinds present in the captured
    scope get weights.
    """

    name = "pcgrad_modular"
    reads = frozenset({"gram", "module_grams"})

    def __call__(self, s: TaskGradStats) -> Balance:
        orders = self._orders()
        a, projections = self._solve(s, orders, None)
        module_weights, info = {}, {"projections": float(projections)}
        for kind in MODULE_KINDS:
            if kind in s.module_grams:
                a_kind, n_kind = self._solve(s, orders, kind)
                module_weights[kind] = combination_weights(a_kind, s.shares)
                info[f"projections/{kind}"] = float(n_kind)
        return Balance(
            combination_weights(a, s.shares), module_weights=module_weights or None, info=info
        )
