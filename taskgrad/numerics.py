"""Numerical faults: a step with a non-finite loss or gradient is skipped, never applied.

Each update is checked twice before the optimizer touches anything:

1. after the backward (``check_backward``, in ``train_step``): the loss of every task's rows and,
   when the step is measured, each (task, half) group's gradient in ``trainer.groups.buffer``
   [2K, P] (row m = 2k + h is task k's) - before the balancing strategy, so no strategy ever sees
   a NaN Gram matrix, and with the faulty task(s) named;
2. inside ``optimizer_step``: the combined gradient's norm (computed anyway for clipping), which
   also covers unmeasured steps and a strategy's weights.

A skipped update: no optimizer step, ``.grad`` cleared, the step's remaining inner updates not
run, the learning-rate schedule advanced as if they had run (it stays a function of the step).
The step's record keeps its rollout statistics and adds ``train/skipped`` = 1 and
``task/<task>/nonfinite`` = 1 for each task named; these keys are written only then, so normal
records are unchanged. A warning line names the step, what was non-finite and the tasks.
``optim.max_skipped_steps`` skipped steps in a row stop the run with ``NonFiniteError``.

Parameters are checked when the model is loaded and after every optimizer step. A non-finite
parameter cannot be skipped away (every later step would be non-finite too), so it stops the run
at once; the usual cause is AdamW on a float16 model, whose eps (1e-8) underflows to 0 in float16,
and the error says so. A non-finite model is never checkpointed (``RunDir.save_checkpoint``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from taskgrad import metrics as M


class NonFiniteError(RuntimeError):
    """Training met non-finite numbers it cannot skip; the message is one line."""


@dataclass(frozen=True)
class Fault:
    """Why an update was skipped."""

    what: str  # "loss" or "gradient"
    tasks: tuple[str, ...] = ()  # the tasks whose loss or group gradient is non-finite

    def metrics(self) -> dict[str, float]:
        out = {M.SKIPPED: 1.0}
        out.update({M.nonfinite_key(t): 1.0 for t in self.tasks})
        return out

    def describe(self) -> str:
        named = f" (task {', '.join(self.tasks)})" if self.tasks else ""
        return f"non-finite {self.what}{named}"


def nonfinite_parameters(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the tensors holding a NaN or inf.

    One float32 sum per tensor (no tensor-sized temporaries, one device sync): NaN and inf
    propagate into the sum. A sum can also overflow with finite entries, so a non-finite sum
    is confirmed entry by entry before the name is reported.
    """
    named = list(named)
    if not named:
        return []
    sums = [p.detach().sum(dtype=torch.float32) for _, p in named]
    try:
        finite = torch.stack(sums).isfinite().cpu()
    except RuntimeError:  # tensors on several devices
        finite = torch.tensor([bool(s.isfinite()) for s in sums])
    if bool(finite.all()):
        return []
    return [
        name
        for (name, p), ok in zip(named, finite.tolist(), strict=True)
        if not ok and not bool(torch.isfinite(p.detach()).all())
    ]


def check_parameters(model: torch.nn.Module, when: str) -> None:
    """Raise ``NonFiniteError`` if a parameter of ``model`` is non-finite; ``when`` says at
    which point (e.g. "after the optimizer step of step 3")."""
    bad = nonfinite_parameters(model.named_parameters())
    if not bad:
        return
    dtype = next(model.parameters()).dtype
    hint = ""
    if dtype == torch.float16:
        hint = (
            "; the model is float16, where AdamW's eps underflows to 0: use model.dtype=float32 "
            "or bfloat16"
        )
    raise NonFiniteError(
        f"{len(bad)} parameter tensor(s) became non-finite {when} (e.g. {bad[0]}); nothing "
        f"non-finite was checkpointed{hint}"
    )


def check_backward(
    loss_rows: torch.Tensor,
    task_index: torch.Tensor,
    tasks: list[str],
    buffer: torch.Tensor | None,
) -> Fault | None:
    """A fault if a row's loss (``loss_rows`` [B*G], rows of task ``task_index`` [B*G]) or a group
    gradient (``buffer`` [2K, P], row m = 2k + h; None when the step is not measured) is
    non-finite; None otherwise."""
    bad_loss = ~torch.isfinite(loss_rows)
    if bool(bad_loss.any()):
        ks = sorted(set(task_index[bad_loss].tolist()))
        return Fault("loss", tuple(tasks[k] for k in ks))
    if buffer is None:
        return None
    # Row sums first: no [2K, P] boolean temporary; a non-finite sum is confirmed row by row.
    sums = buffer.sum(dim=1, dtype=torch.float32)  # [2K]
    suspect = (~torch.isfinite(sums)).nonzero().flatten().tolist()
    bad = [m for m in suspect if not bool(torch.isfinite(buffer[m]).all())]
    if not bad:
        return None
    ks = sorted({m // 2 for m in bad})
    return Fault("gradient", tuple(tasks[k] for k in ks))


def skipped_in_a_row(previous: int, metrics: dict[str, float]) -> int:
    """The run of consecutive skipped steps after a step with ``metrics``."""
    return previous + 1 if metrics.get(M.SKIPPED) else 0


def stop_message(count: int, step: int, metrics: dict[str, float], tasks: list[str]) -> str:
    """The one-line error when ``count`` steps in a row, the last being ``step``, were skipped."""
    named = [t for t in tasks if metrics.get(M.nonfinite_key(t))]
    which = f"; last non-finite task(s): {', '.join(named)}" if named else ""
    return (
        f"steps {step - count + 1}-{step}: {count} steps in a row had a non-finite loss or "
        f"gradient and were skipped (optim.max_skipped_steps={count}){which}; the run stops "
        "here: try a lower optim.lr, model.dtype=float32, or check the tasks' rewards"
    )
