"""Stage 0: the interference gap from single-task and multi-task runs."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from taskgrad.analysis import interference as I
from taskgrad.analysis.runs import load_run
from tests.synthetic_runs import write_run


def test_single_task_plan_keeps_the_mix_budget_and_pins_the_model():
    runs = I.single_task_plan("default", 2, ["steps=5"], model="/models/tiny-abc")
    assert [r.name for r in runs] == [f"single-{t}-s{s}" for t in
                                      ("code", "countdown", "table_qa")
                                      for s in range(2)]  # fmt: skip
    first = runs[0].overrides
    assert first[0] == "steps=5" and "model=/models/tiny-abc" in first and "seed=0" in first
    (spec,) = yaml.safe_load(first[1].split("=", 1)[1])
    assert spec["name"] == "code" and spec["options"] == {"num_ops": 3}  # its own options travel


def test_gaps_are_paired_by_seed_by_hand(tmp_path):
    # synthetic final accuracy = clip(reward - 0.1); the mix: code 0.3 -> 0.2; alone: 0.5 -> 0.4
    # on seed 0 and 0.6 -> 0.5 on seed 1: gaps 0.2 and 0.3, mean 0.25, t(0.975, 1) = 12.706
    multis, singles = [], []
    for seed, alone in ((0, 0.5), (1, 0.6)):
        reward = np.full((10, 3), 0.3)  # the default mix: code, countdown, table_qa
        multis.append(load_run(write_run(tmp_path / f"m{seed}", seed=seed, steps=10,
                                         arrays={"reward": reward})))  # fmt: skip
        singles.append(load_run(write_run(
            tmp_path / f"s{seed}", seed=seed, steps=10, overrides=("tasks=code",),
            arrays={"reward": np.full((10, 1), alone), "u": np.full((10, 1), 1e-3),
                    "abs_advantage": np.full((10, 1), 0.5),
                    "response_length": np.full((10, 1), 5.0)},
        )))  # fmt: skip
    (gap,) = I.gaps(singles, multis)
    assert (gap.task, gap.seeds) == ("code", 2)
    assert gap.gap == pytest.approx(0.25) and gap.single == pytest.approx(0.45)
    assert (gap.lo, gap.hi) == pytest.approx((0.25 - 12.706 * 0.05, 0.25 + 12.706 * 0.05), abs=1e-3)
    mean_room, worst_room = I.room([gap])
    assert mean_room == pytest.approx(0.25) and worst_room == pytest.approx(0.25)
    assert "+25.0" in I.gap_markdown([gap])
