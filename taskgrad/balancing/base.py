"""What a balancing strategy sees and returns.

A strategy is a small registered class whose ``__call__`` is a pure function of
``TaskGradStats`` (Gram matrices of task gradients over the chosen scope, per-task training
statistics, learning gains) plus its own explicit state; it never sees the model or the
optimizer. It returns a ``Balance``: multipliers on each task's contribution to the update
(uniform = all ones, which reproduces plain GRPO exactly), optionally per module scope, and
optionally the task sampling probabilities of the next batch.

The combined gradient is ``sum_k task_weights[k] * G_k`` where ``G_k = s_k g_k`` is task k's
contribution to the plain mixed gradient (see gradients.py). A method that outputs a combination
of *task gradients* ``sum_k a_k g_k`` expresses it as ``task_weights = a / s``.

**Normalisation.** The coefficients are scaled so that ``sum_k a_k = 1``, the sum the plain mix
has (its coefficients are a_k = s_k). Then one task always gets weight 1 (plain GRPO), and methods
differ from the plain mix in the *direction* and the relative sizes they give the tasks, not in an
overall scale that AdamW would largely undo anyway. ``combination_weights`` does this conversion;
strategies whose output is a sum of projected task gradients (PCGrad) are written as coefficients
on the original g_k and normalised the same way. A method whose scale is essential says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from taskgrad.gradients import task_statistics
from taskgrad.registry import NoOptions, Registry, parse_options


@dataclass
class TaskWindow:
    """Means over the last ``steps`` measured steps (this one included) of per-task statistics,
    with their standard errors sd / sqrt(n): the noise-aware inputs of strategies driven by
    progress or gradient size. Per-step values are noisy; sums over steps are not biased by the
    noise, so strategies read these rather than single-step estimates.

    Names: ``sqnorm_unbiased``, ``sqnorm_naive`` (from the Gram), ``reward``, ``abs_advantage``,
    ``zero_adv_share`` (from the rollouts). A task absent from a step adds nothing to its means.
    """

    steps: int  # how many steps the means cover (the window, or fewer at the start)
    mean: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [K] float64
    se: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [K] float64

    def detectable(self, name: str = "sqnorm_unbiased", z: float = 1.96) -> torch.Tensor:
        """[K] bool: the window mean is above zero by more than z standard errors."""
        return torch.nan_to_num(self.mean[name] - z * self.se[name], nan=-1.0) > 0


@dataclass
class TaskGradStats:
    tasks: list[str]  # K task names, in config order
    step: int
    group_gram: torch.Tensor  # [2K, 2K] <G_m, G_n> of (task, half) group contributions, float64
    shares: torch.Tensor  # [K, 2] s_kh: each half's weight in the batch objective
    module_grams: dict[str, torch.Tensor] = field(default_factory=dict)  # scope -> [2K, 2K]
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [K], e.g. "reward"
    gains: torch.Tensor | None = None  # [K] latest learning gain (NaN where unknown)
    window: TaskWindow | None = None  # window means of the statistics above (noise-aware)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def task_shares(self) -> torch.Tensor:
        return self.shares.sum(1)  # [K] s_k

    def contribution_gram(self, scope: str | None = None) -> torch.Tensor:
        """<G_j, G_k>: [K, K] Gram of the tasks' contributions to the plain mixed gradient."""
        q = self.group_gram if scope is None else self.module_grams[scope]
        k = self.num_tasks
        return q.view(k, 2, k, 2).sum(dim=(1, 3))

    def task_gram(self, scope: str | None = None) -> torch.Tensor:
        """<g_j, g_k>: [K, K] Gram of the tasks' own objective gradients (naive diagonal)."""
        inv = torch.where(self.task_shares > 0, 1.0 / self.task_shares.clamp(min=1e-300), 0.0)
        return self.contribution_gram(scope) * inv[:, None] * inv[None, :]

    def sqnorm_unbiased(self) -> torch.Tensor:
        """<g_kA, g_kB>: [K] the split-half unbiased squared norm of each task's gradient."""
        return task_statistics(self.group_gram, self.shares)["sqnorm_unbiased"]


@dataclass
class Balance:
    task_weights: torch.Tensor  # [K] multipliers on G_k; ones = plain GRPO
    module_weights: dict[str, torch.Tensor] | None = None  # scope -> [K], where it applies
    sampling: torch.Tensor | None = None  # [K] probabilities of the next batch's prompts
    info: dict[str, float] = field(default_factory=dict)  # logged as balance/info/<name>
    task_info: dict[str, torch.Tensor] = field(default_factory=dict)  # balance/<task>/info/<name>


# What a strategy may read of TaskGradStats besides the batch composition (shares).
READABLE = frozenset({
    "gram", "module_grams", "reward", "abs_advantage", "zero_adv_share", "response_length",
    "objective_scale", "gains", "window",
})  # fmt: skip


class Strategy:
    """Base class: subclasses set ``name``, declare what they are, and implement ``__call__``.

    Declarations (class attributes), which the property tests hold every strategy to:

    - ``reads``: which parts of ``TaskGradStats`` it reads besides the shares (a subset of
      ``READABLE``: the Gram, the module Grams, training statistics by name, gains); anything
      else may change without changing its output. ``needs_gradients`` follows from it.
    - ``scale_invariant``: the update's direction is unchanged when one task's gradient is
      multiplied by a constant.
    - ``order_dependent``: the output depends on the order of the tasks beyond permuting with
      them (PCGrad's projection order), so permutation equivariance holds for two tasks only.

    Options are a nested ``Options`` dataclass (fields with defaults and a ``check``), given as an
    instance or as keywords; both are validated with one-line errors naming the field. The loop
    captures the group buffers for every strategy other than ``uniform``, because it applies the
    weights to them (no extra backward). Stateful strategies keep their state in ``self.state``
    (a dict of tensors / numbers) which the checkpoint saves and restores.
    """

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    reads: ClassVar[frozenset[str]] = frozenset()
    scale_invariant: ClassVar[bool] = False
    order_dependent: ClassVar[bool] = False
    needs_gradients: ClassVar[bool] = False  # set from ``reads``

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = set(cls.reads) - READABLE
        if unknown:
            raise TypeError(f"{cls.__name__}.reads: unknown {sorted(unknown)}; valid {READABLE}")
        cls.needs_gradients = bool(cls.reads & {"gram", "module_grams"})

    def __init__(self, num_tasks: int, options: Any = None, **kwargs: Any) -> None:
        if options is None:
            options = parse_options(type(self), kwargs, "balance.options", num_tasks=num_tasks)
        elif kwargs:
            raise TypeError("pass options either as an Options instance or as keywords")
        self.num_tasks = num_tasks
        self.options = options
        self.state: dict[str, Any] = {}

    def __call__(self, s: TaskGradStats) -> Balance:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = dict(state)


STRATEGIES: Registry[type[Strategy]] = Registry(
    "balancing strategy", "taskgrad.balancing", Strategy
)


def prompt_counts(probabilities: torch.Tensor, total: int, minimum: int = 1) -> list[int]:
    """Split ``total`` prompts by ``probabilities`` (largest remainder), each task >= minimum."""
    k = probabilities.numel()
    spare = total - minimum * k
    if spare < 0:
        raise ValueError(f"{total} prompts cannot give {k} tasks {minimum} each")
    p = probabilities.double().clamp(min=0)
    p = p / p.sum() if p.sum() > 0 else torch.full((k,), 1.0 / k, dtype=torch.float64)
    exact = p * spare
    counts = exact.floor().long()
    rest = spare - int(counts.sum())
    order = torch.argsort(exact - counts, descending=True, stable=True)
    counts[order[:rest]] += 1
    return [minimum + int(c) for c in counts]


def combination_weights(a: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
    """task_weights [K] for the update ``sum_k a_k g_k``, normalised to ``sum_k a_k = 1``.

    w_k = (a_k / sum_j a_j) * (S / s_k) with S = sum_k s_k, which is 1 up to rounding: dividing
    by S makes a single task get weight 1 exactly. Tasks absent from the batch (s_k = 0) add
    nothing to the update; they get weight 1 and their a_k is ignored. When sum_j a_j is not
    finite and positive there is no direction to normalise: ones (the plain mix).
    """
    s = shares.double().sum(1)  # [K]
    present = s > 0
    a = torch.where(present, a.double(), 0.0)
    total = a.sum()
    if not (torch.isfinite(total) and total > 0):
        return torch.ones_like(s)
    w = (a / total) * (s.sum() / s.clamp(min=1e-300))  # [K]
    return torch.where(present, w, 1.0)
