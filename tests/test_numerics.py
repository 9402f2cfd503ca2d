"""Numerical faults: non-finite steps are skipped (not applied), named by task, counted; a run of
them, or a non-finite model, stops the run; nothing non-finite is checkpointed."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from taskgrad import metrics as M
from taskgrad.config import load_config
from taskgrad.numerics import NonFiniteError, check_backward, nonfinite_parameters
from taskgrad.rundir import read_records
from taskgrad.train import optimizer_step, train
from tests.test_train import PARITY, SMALL

TASKS = ["left", "right"]
BASE = [
    *SMALL,
    f"tasks=[{{name: left, type: '{PARITY}'}}, {{name: right, type: '{PARITY}'}}]",
    "steps=5",
    "eval.every=0",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


# --- units ------------------------------------------------------------------------------------


def test_nonfinite_parameters_names_them_and_ignores_a_sum_overflow():
    ok = torch.nn.Linear(2, 2)
    assert nonfinite_parameters(ok.named_parameters()) == []
    with torch.no_grad():
        ok.bias[1] = math.inf
    assert nonfinite_parameters(ok.named_parameters()) == ["bias"]
    huge = [("big", torch.full((3,), 1e300, dtype=torch.float64))]  # float32 sum: inf
    assert nonfinite_parameters(huge) == []


def test_check_backward_names_the_task_of_each_group():
    task_index = torch.tensor([0, 0, 1, 1])
    loss = torch.tensor([1.0, 2.0, math.nan, 3.0])
    fault = check_backward(loss, task_index, TASKS, None)
    assert fault.what == "loss" and fault.tasks == ("right",)
    buffer = torch.zeros(4, 5)  # [2K, P]: rows 0, 1 left (halves 0, 1); 2, 3 right
    assert check_backward(loss.nan_to_num(), task_index, TASKS, buffer) is None
    buffer[1, 3] = math.inf  # left's second half
    fault = check_backward(loss.nan_to_num(), task_index, TASKS, buffer)
    assert fault.what == "gradient" and fault.tasks == ("left",)
    assert fault.metrics() == {M.SKIPPED: 1.0, M.nonfinite_key("left"): 1.0}


def test_optimizer_step_never_applies_a_non_finite_gradient():
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    trainer = SimpleNamespace(
        model=model, policy=model, optimizer=opt, scheduler=sched,
        cfg=SimpleNamespace(optim=SimpleNamespace(max_grad_norm=1.0)),
    )  # fmt: skip
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.tensor([[1.0, math.nan, 0.0]])).sum().backward()
    out = optimizer_step(trainer, step=7)
    assert out.fault is not None and out.fault.what == "gradient"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert not opt.state  # AdamW never stepped


# --- end to end -------------------------------------------------------------------------------


def poisoned(monkeypatch, steps: set[int], task: int = 1) -> None:
    """Task ``task``'s rewards are NaN at the given training steps (its loss, then gradient)."""
    import taskgrad.train as loop

    real, calls = loop.score_rows, {"n": 0}

    def score_rows(tasks, rollout):
        rewards, components = real(tasks, rollout)
        calls["n"] += 1  # scoring runs once per training step, in order
        if calls["n"] in steps:
            rewards[rollout.task_index == task] = math.nan
        return rewards, components

    monkeypatch.setattr(loop, "score_rows", score_rows)


@pytest.mark.slow
def test_a_non_finite_step_is_skipped_named_and_the_run_goes_on(tmp_path, cache, monkeypatch):
    poisoned(monkeypatch, {2, 4})
    weights = {}
    import taskgrad.train as loop

    real_step = loop.train_step

    def watched(trainer, step):
        before = [p.detach().clone() for p in trainer.policy.parameters()]
        out = real_step(trainer, step)
        after = list(trainer.policy.parameters())
        weights[step] = all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
        return out

    monkeypatch.setattr(loop, "train_step", watched)
    run = train(load_config(None, [*BASE, f"model.cache_dir={cache}"]), tmp_path / "run")
    recs = read_records(run / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]
    for r in recs:
        skipped = r["step"] in (2, 4)
        assert (M.SKIPPED in r) == skipped and weights[r["step"]] == skipped
        assert (M.nonfinite_key("right") in r) == skipped and M.nonfinite_key("left") not in r
        assert any(k.startswith("grad/") for k in r) != skipped  # no gradient metrics when skipped
    assert (run / "summary.json").exists()


@pytest.mark.slow
def test_max_skipped_steps_in_a_row_stop_the_run(tmp_path, cache, monkeypatch):
    poisoned(monkeypatch, {2, 3, 4})
    cfg = load_config(None, [*BASE, f"model.cache_dir={cache}", "optim.max_skipped_steps=3"])
    with pytest.raises(NonFiniteError, match=r"steps 2-4: 3 steps in a row .*right"):
        train(cfg, tmp_path / "run")
    recs = read_records(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3, 4]  # the stopping step is logged
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["step_000002"]  # finite weights (step 2 was skipped); none at step 4
    assert not (tmp_path / "run" / "lock").exists()  # released on the error


@pytest.mark.slow
def test_float16_adamw_stops_at_once_and_saves_nothing(tmp_path, cache):
    cfg = load_config(None, [*BASE, f"model.cache_dir={cache}", "model.dtype=float16"])
    with pytest.raises(NonFiniteError, match=r"optimizer step of step 1.*float16"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
