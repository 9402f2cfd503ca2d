r"""A TRL generation batch as task-pure, half-pure micro-batches, and what each group weighs.

TRL's ``GRPOTrainer`` (1.16) generates one *generation batch* every ``steps_per_generation``
micro-batches, shuffles its rows (``shuffle_sequence_dict``) and cuts it into equal micro-batches,
one per gradient-accumulation step. The integration sorts the rows by (task k, half h) group
m = 2k + h instead, so that every micro-batch holds one group and the backward passes TRL runs
anyway give each group's gradient (gradients.py). Nothing in this module imports TRL.

**Sampler.** ``TaskStratifiedRepeatSampler`` replaces TRL's ``RepeatSampler``. Each generation
batch holds exactly n_k prompts of task k, each prompt's G completions adjacent (TRL's advantages
``view(-1, G)`` need that), repeated ``num_iterations * steps_per_generation`` times like
``RepeatSampler``. Halves split a task's *prompts*, never a prompt's completions: the sampler
shuffles the task's prompts and cuts them into two halves of n_k / 2, and TRL then hands process
r the r-th contiguous slice of the batch (accelerate's ``BatchSamplerShard``), so the sampler lays
every slice out as n_k / (2P) prompts of each half of each task, in group order. A process's slice
is therefore not a half: both halves of every task are on every process.

**Exactness.** With equal micro-batches and ``steps_per_generation == gradient_accumulation_steps``
each row's (or token's) weight in TRL's step objective does not depend on which micro-batch the row
lands in, for every loss type but bnpo. Regrouping the rows then leaves the summed gradient as it
is (up to float summation order), and each group gradient is that group's exact contribution
G_kh = s_kh g_kh. With N rows and T loss-mask tokens in the generation batch, B rows per
micro-batch, GA micro-batches and l_it the per-token loss:

| loss_type          | TRL's micro-batch loss         | token weight  | loss_agg        | s_kh     |
|--------------------|--------------------------------|---------------|-----------------|----------|
| grpo, sapo         | mean_i (sum_t l m / len_i) / GA| 1 / (N len_i) | seq_mean        | N_kh / N |
| luspo              | mean_i sum_t l m / GA          | 1 / N         | constant, L = 1 | N_kh / N |
| dr_grpo            | sum l m / (B L_max) / GA       | 1 / (N L_max) | constant, L_max | N_kh / N |
| dapo, cispo, vespo | sum l m / (T GA / spg)         | 1 / T         | token_mean      | T_kh / T |
| bnpo               | sum l m / T_mb / GA            | 1/(GA T_mb(i))| (token_mean)    | below    |

(L_max = ``max_completion_length``, T_mb = the tokens of the row's micro-batch). The shares are
taskgrad's own (``batch.group_shares`` with the aggregation in the table), so g_k = G_k / s_k is
exactly the gradient of TRL's loss on task k's rows alone. For dapo, cispo and vespo T is random,
so the split-half estimate carries the O(1/n) ratio bias that gradients.py describes.

**bnpo** normalises by each micro-batch's own token count, so its gradient depends on TRL's random
partition (task-pure micro-batches change it by 8-31 % in the research runs). It is made exact by
drawing TRL's partition (the same ``randperm``) and multiplying row i's advantage by
T_ours(mb) / T_plain(mb(i)), which scales the row's clipped surrogate by exactly that factor
(min(c x, c y) = c min(x, y) for c > 0). That needs ``beta == 0`` (the KL term does not carry the
advantage). Its share is s_kh = sum_{i in kh} T_i / (GA T_plain(mb(i))), and g_k = G_k / s_k is a
token mean of task k under TRL's per-micro-batch weights, the task's own bnpo gradient only when
all micro-batches have equal token counts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import Sampler

from taskgrad.batch import group_shares


@dataclass(frozen=True)
class LossMapping:
    """How one TRL loss type's normaliser maps onto taskgrad's exact decomposition."""

    shares_by: str  # "rows" (N_kh / N), "tokens" (T_kh / T) or "bnpo" (re-weighted)
    loss_agg: str  # taskgrad's aggregation with the same token weights (bnpo: the nearest)
    loss_constant: str | int | None  # L of loss_agg=constant: "max_completion_length" or a number


LOSS_TYPES: dict[str, LossMapping] = {
    "grpo": LossMapping("rows", "seq_mean", None),
    "sapo": LossMapping("rows", "seq_mean", None),
    "luspo": LossMapping("rows", "constant", 1),
    "dr_grpo": LossMapping("rows", "constant", "max_completion_length"),
    "dapo": LossMapping("tokens", "token_mean", None),
    "cispo": LossMapping("tokens", "token_mean", None),
    "vespo": LossMapping("tokens", "token_mean", None),
    "bnpo": LossMapping("bnpo", "token_mean", None),
}


def loss_constant(loss_type: str, max_completion_length: int) -> int | None:
    """L of the constant aggregation that matches ``loss_type`` (None for the others)."""
    c = LOSS_TYPES[loss_type].loss_constant
    return max_completion_length if c == "max_completion_length" else c


# --- the plan: prompts per task and the micro-batch arithmetic ----------------------------------


@dataclass(frozen=True)
class BatchPlan:
    """The shape of every generation batch: n_k prompts of each task, G completions each."""

    tasks: tuple[str, ...]
    prompts_per_task: tuple[int, ...]  # n_k per generation batch, over all processes
    group_size: int  # G = num_generations
    num_processes: int  # P
    micro_batch_rows: int  # B = per_device_train_batch_size

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def num_groups(self) -> int:
        return 2 * len(self.tasks)

    def half_rows(self, k: int) -> int:
        """Rows of one half of task k on one process."""
        return self.prompts_per_task[k] // (2 * self.num_processes) * self.group_size

    @property
    def micro_batches(self) -> int:
        """Micro-batches per process per generation batch (= gradient_accumulation_steps)."""
        return sum(2 * self.half_rows(k) // self.micro_batch_rows for k in range(self.num_tasks))


def make_plan(
    tasks: Sequence[str],
    prompts_per_task: Mapping[str, int] | None,
    *,
    generation_batch_size: int,
    group_size: int,
    num_processes: int,
    micro_batch_rows: int,
    gradient_accumulation_steps: int,
) -> BatchPlan:
    """Check that every (task, half) group fills whole micro-batches; ValueError naming what not.

    ``prompts_per_task`` None splits the generation batch's prompts equally between the tasks.
    """
    k, g, p, b = len(tasks), group_size, num_processes, micro_batch_rows
    prompts = generation_batch_size // g
    if prompts_per_task is None:
        if prompts % k:
            raise ValueError(
                f"prompts_per_task: the generation batch's {prompts} prompts "
                f"(generation_batch_size {generation_batch_size} / num_generations {g}) do not "
                f"split equally between {k} tasks; give prompts_per_task or {_suggest(k, g, p)}"
            )
        counts = [prompts // k] * k
    else:
        unknown = sorted(set(prompts_per_task) - set(tasks))
        missing = [t for t in tasks if t not in prompts_per_task]
        if unknown or missing:
            raise ValueError(f"prompts_per_task: unknown tasks {unknown}, missing tasks {missing}")
        counts = [int(prompts_per_task[t]) for t in tasks]
        if sum(counts) != prompts:
            raise ValueError(
                f"prompts_per_task: {sum(counts)} prompts in all, but a generation batch holds "
                f"{prompts} (generation_batch_size {generation_batch_size} / num_generations {g})"
            )
    for task, n in zip(tasks, counts, strict=True):
        if n <= 0 or n % (2 * p):
            raise ValueError(
                f"prompts_per_task[{task}]={n}: each half of a task needs the same whole number of "
                f"prompts on each of the {p} process(es): use a positive multiple of {2 * p}"
            )
        if (n // (2 * p) * g) % b:
            raise ValueError(
                f"per_device_train_batch_size={b}: half of task {task!r} is "
                f"{n // (2 * p) * g} rows per process, not a whole number of micro-batches; "
                f"{_suggest(k, g, p)}"
            )
    plan = BatchPlan(tuple(tasks), tuple(counts), g, p, b)
    if plan.micro_batches != gradient_accumulation_steps:  # implied by TRL's arithmetic; a guard
        raise ValueError(
            f"gradient_accumulation_steps={gradient_accumulation_steps}: the groups fill "
            f"{plan.micro_batches} micro-batches per generation batch"
        )
    return plan


def _suggest(k: int, g: int, p: int) -> str:
    return (
        f"e.g. with 2 x {p} prompts per task (one prompt per half per process): "
        f"per_device_train_batch_size={g}, gradient_accumulation_steps={2 * k}, "
        f"num_generations={g}"
    )


# --- the sampler --------------------------------------------------------------------------------


class TaskStratifiedRepeatSampler(Sampler[int]):
    """TRL's RepeatSampler with a fixed number of prompts per task and a group-sorted layout.

    ``task_index``: the task of every dataset row (-1: not one of the plan's tasks, never drawn).
    Like RepeatSampler, the order is drawn from a generator of its own (seeded once, so every epoch
    draws anew), and an epoch ends when some task runs out of prompts for a whole batch.
    """

    def __init__(
        self,
        task_index: Sequence[int],
        plan: BatchPlan,
        repeat_count: int = 1,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        self.plan = plan
        self.rows = [[i for i, t in enumerate(task_index) if t == k] for k in range(plan.num_tasks)]
        for task, rows, n in zip(plan.tasks, self.rows, plan.prompts_per_task, strict=True):
            if len(rows) < n:
                raise ValueError(
                    f"task {task!r}: {len(rows)} prompts in the dataset, fewer than the {n} "
                    "each generation batch needs"
                )
        self.repeat_count = repeat_count
        self.generator = torch.Generator().manual_seed(seed) if shuffle else None
        counts = zip(self.rows, plan.prompts_per_task, strict=True)
        self.num_batches = min(len(rows) // n for rows, n in counts)

    def batch_layout(self, picked: list[list[int]]) -> list[int]:
        """Dataset rows of one generation batch (``picked[k]``: task k's n_k prompts; the first
        half is half 0), laid out so that process r's contiguous slice is in group order."""
        p = self.plan.num_processes
        order: list[int] = []
        for r in range(p):
            for rows, n in zip(picked, self.plan.prompts_per_task, strict=True):
                q = n // (2 * p)  # prompts of each half on each process
                for half in (rows[: n // 2], rows[n // 2 :]):
                    order.extend(half[r * q : (r + 1) * q])
        return order

    def __iter__(self) -> Iterator[int]:
        perms = []
        for rows in self.rows:
            if self.generator is None:
                perms.append(list(rows))
            else:
                perm = torch.randperm(len(rows), generator=self.generator).tolist()
                perms.append([rows[i] for i in perm])
        counts = self.plan.prompts_per_task
        for b in range(self.num_batches):
            picked = [perm[b * n : (b + 1) * n] for perm, n in zip(perms, counts, strict=True)]
            order = self.batch_layout(picked)
            for _ in range(self.repeat_count):
                for index in order:
                    yield from [index] * self.plan.group_size

    def __len__(self) -> int:
        prompts = sum(self.plan.prompts_per_task)
        return self.num_batches * prompts * self.plan.group_size * self.repeat_count


# --- one process's generation batch -> groups -> micro-batches -----------------------------------


def group_index(task_index: Sequence[int], plan: BatchPlan) -> torch.Tensor:
    """Group m = 2k + h of every row of one process's generation batch, [n] int64.

    A prompt is a run of G consecutive rows (as TRL's advantages assume). Half 0 of task k is
    the first half of its prompts in order of appearance, which is the sampler's half 0.
    """
    g, n = plan.group_size, len(task_index)
    if n % g:
        raise ValueError(f"generation batch of {n} rows is not whole prompts of {g} completions")
    prompt_task = [task_index[i] for i in range(0, n, g)]
    for j, k in enumerate(prompt_task):
        if any(t != k for t in task_index[j * g : (j + 1) * g]):
            raise ValueError(f"prompt {j} of the generation batch mixes tasks across completions")
    seen = [0] * plan.num_tasks
    totals = [prompt_task.count(k) for k in range(plan.num_tasks)]
    groups = []
    for k in prompt_task:
        if k < 0:
            raise ValueError("a generation batch row has a task that is not one of the plan's")
        groups.append(2 * k + int(seen[k] >= totals[k] / 2))
        seen[k] += 1
    return torch.tensor(groups, dtype=torch.long).repeat_interleave(g)  # [n]


def micro_batch_groups(sorted_groups: torch.Tensor, num_micro: int) -> list[int]:
    """The group of each of ``num_micro`` equal micro-batches of group-sorted rows; ValueError
    if one would mix groups (the plan's arithmetic rules it out; this guards the layout)."""
    chunks = sorted_groups.view(num_micro, -1)  # [GA, B]
    if not bool((chunks == chunks[:, :1]).all()):
        raise ValueError(
            "a micro-batch mixes (task, half) groups: the generation batch does not follow the "
            "plan (was _get_train_sampler replaced?)"
        )
    return chunks[:, 0].tolist()


def permute(batch: dict, order: torch.Tensor) -> dict:
    """Rows of every per-row value in ``order`` (as TRL's shuffle_sequence_dict does)."""

    def take(v):
        if v is None or (isinstance(v, torch.Tensor) and v.ndim == 0):
            return v
        if isinstance(v, torch.Tensor):
            return v[order.to(v.device)]
        return [v[i] for i in order.tolist()]

    return {k: take(v) for k, v in batch.items()}


def _per_row_micro_tokens(tokens: torch.Tensor, order: torch.Tensor, rows: int) -> torch.Tensor:
    """For each row (original order): the loss tokens of its micro-batch when the batch is taken
    in ``order`` and cut into micro-batches of ``rows`` rows, clamped to 1 as TRL does."""
    per_micro = tokens[order].view(-1, rows).sum(1).clamp(min=1.0)  # [GA]
    out = torch.empty_like(tokens)
    out[order] = per_micro.repeat_interleave(rows)
    return out  # [n]


def shares(
    loss_type: str,
    loss_mask: torch.Tensor,
    groups: torch.Tensor,
    plan: BatchPlan,
    max_completion_length: int,
    plain_order: torch.Tensor,
) -> torch.Tensor:
    """s_kh of every group, [K, 2] float64 (rows in the batch's original order).

    ``plain_order``: TRL's own shuffle of this batch (used by bnpo only).
    """
    mapping = LOSS_TYPES[loss_type]
    m = plan.num_groups
    if mapping.shares_by != "bnpo":
        constant = loss_constant(loss_type, max_completion_length) or 1
        out = group_shares(loss_mask, groups, m, mapping.loss_agg, constant)
        return out.view(plan.num_tasks, 2)
    tokens = loss_mask.sum(1).double()  # [n]
    plain = _per_row_micro_tokens(tokens, plain_order, plan.micro_batch_rows)
    weight = tokens / (plan.micro_batches * plain)  # [n] the row's mass in the step objective
    out = torch.zeros(m, dtype=torch.float64).index_add_(0, groups, weight)
    return out.view(plan.num_tasks, 2)


def bnpo_advantage_scale(
    loss_mask: torch.Tensor, plain_order: torch.Tensor, order: torch.Tensor, rows: int
) -> torch.Tensor:
    """c_i = T_ours(mb) / T_plain(mb(i)) per row, in the sorted order ``order``: [n] float32."""
    tokens = loss_mask.sum(1).double()
    plain = _per_row_micro_tokens(tokens, plain_order, rows)
    ours = _per_row_micro_tokens(tokens, order, rows)
    return (ours / plain)[order].float()


# --- per-task statistics of the step (metrics.TASK_STATS) ---------------------------------------


def rollout_statistics(
    task_index: torch.Tensor,
    rewards: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    prompt_mask: torch.Tensor,
    shares_kh: torch.Tensor,
    group_size: int,
) -> dict[str, torch.Tensor]:
    """What TRL's generation batch says per task: name -> [K] float64 (NaN where undefined).

    ``rewards`` [n] are TRL's weighted sums of its reward functions (NaN: unscorable). Accuracy
    and reward_var assume 0/1 rewards (metrics.TASK_STATS), so they are NaN for a task whose
    rewards are not all 0 or 1. A prompt has zero advantage when its completions scored alike.
    """
    k = shares_kh.shape[0]
    names = (
        "prompts", "reward", "accuracy", "reward_var", "abs_advantage", "zero_adv_share",
        "response_length", "prompt_length", "batch_share",
    )  # fmt: skip
    out = {name: torch.full((k,), torch.nan, dtype=torch.float64) for name in names}
    lengths = completion_mask.sum(1).double()  # [n]
    grouped = rewards.double().view(-1, group_size)  # [n/G, G]
    alike = (grouped.nan_to_num(0.0).amax(1) - grouped.nan_to_num(0.0).amin(1)) == 0  # [n/G]
    prompt_task = task_index.view(-1, group_size)[:, 0]  # [n/G]
    for t in range(k):
        rows = task_index == t
        if not rows.any():
            continue
        r = rewards[rows].double()
        mean = r.nanmean()
        binary = bool(((r == 0) | (r == 1)).all())
        values = {
            "prompts": (prompt_task == t).sum(),
            "reward": mean,
            "accuracy": (r == 1).double().mean() if binary else torch.nan,
            "reward_var": mean * (1 - mean) if binary else torch.nan,
            "abs_advantage": advantages[rows].double().abs().mean(),
            "zero_adv_share": alike[prompt_task == t].double().mean(),
            "response_length": lengths[rows].mean(),
            "prompt_length": prompt_mask[rows].sum(1).double().mean(),
            "batch_share": shares_kh[t].sum(),
        }
        for name, v in values.items():
            out[name][t] = v
    return out


@dataclass
class MicroBatchSums:
    """Per-task sums over one window's micro-batches of what TRL reports per micro-batch.

    Task-pure micro-batches make TRL's own per-micro-batch metrics (the mean entropy, clip ratio
    and KL over the micro-batch's loss tokens) per-task values; they are combined weighted by
    the micro-batch's loss tokens. ``loss`` sums TRL's micro-batch losses: the task's part of the
    batch loss.
    """

    num_tasks: int
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [K] token-weighted sums
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [K] tokens behind it
    loss: torch.Tensor | None = None  # [K]

    def add(self, task: int, loss: float, tokens: float, means: Mapping[str, float]) -> None:
        if self.loss is None:
            self.loss = torch.zeros(self.num_tasks, dtype=torch.float64)
        self.loss[task] += loss
        for name, value in means.items():
            self.sums.setdefault(name, torch.zeros(self.num_tasks, dtype=torch.float64))
            self.tokens.setdefault(name, torch.zeros(self.num_tasks, dtype=torch.float64))
            self.sums[name][task] += value * tokens
            self.tokens[name][task] += tokens

    def statistics(self) -> dict[str, torch.Tensor]:
        """name -> [K]: ``loss`` and the token-weighted means (NaN where a task had no tokens)."""
        out = {} if self.loss is None else {"loss": self.loss.clone()}
        for name, total in self.sums.items():
            n = self.tokens[name]
            out[name] = torch.where(n > 0, total / n.clamp(min=1e-300), torch.nan)
        return out
