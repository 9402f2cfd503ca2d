"""The metric schema: builders and the parser agree, and keys outside the schema are refused.

(Every key of real runs is parsed in test_identity.py.)
"""

from __future__ import annotations

import pytest

from taskgrad import metrics as M

TASKS = ["code", "count/down", "a__b", "x"]  # names with the separators in them


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (M.STEP, M.Key("step", "step")),
        (M.task_key("code", "reward"), M.Key("task", "reward", "code")),
        (M.task_key("count/down", "batch_share"), M.Key("task", "batch_share", "count/down")),
        (M.verifier_key("code", "format_ok"), M.Key("task", "verifier/format_ok", "code")),
        (M.grad_key("full", "x", "sqnorm_unbiased"), M.Key("grad", "sqnorm_unbiased", "x", "full")),
        (
            M.grad_key("layer03", "code", "update_share"),
            M.Key("grad", "update_share", "code", "layer03"),
        ),
        (M.cos_key("proxy", "a__b", "x"), M.Key("grad", "cos", scope="proxy", pair=("a__b", "x"))),
        (M.grad_scope_key("full", "imbalance"), M.Key("grad", "imbalance", scope="full")),
        (M.PROXY_AGREEMENT, M.Key("grad", "spearman", scope="proxy_agreement")),
        (M.balance_key("x", "weight"), M.Key("balance", "weight", "x")),
        (M.balance_key("code", "sampling"), M.Key("balance", "sampling", "code")),
        (M.balance_info_key("z", "code"), M.Key("balance", "info/z", "code")),
        (M.balance_info_key("projections/mlp"), M.Key("balance", "info/projections/mlp")),
        (M.gain_key("x", "probe_ci_low"), M.Key("gain", "probe_ci_low", "x")),
        (M.WINDOW_CENTER, M.Key("gain", "window_center")),
        (M.probe_key("code"), M.Key("probe", "reward", "code")),
        (M.transfer_key("a__b", "code"), M.Key("transfer", "transfer", pair=("a__b", "code"))),
        (M.eval_key("count/down"), M.Key("eval", "accuracy", "count/down")),
        (M.EVAL_MEAN, M.Key("eval", "mean_accuracy")),
        (M.train_key("grad_norm"), M.Key("train", "grad_norm")),
        (M.time_key("rollout"), M.Key("time", "rollout")),
    ],
)
def test_built_keys_parse_back(key, expected):
    assert M.parse(key, TASKS) == expected


@pytest.mark.parametrize(
    "key",
    [
        "task/code/rewards",  # a stat the schema does not document
        "task/nobody/reward",  # not one of the run's tasks
        "grad/full/code/task_weight",  # renamed to task/<task>/batch_share
        "balance/sampling/code",  # renamed to balance/<task>/sampling
        "balance/z/code",  # strategy values live under info/
        "transfer/code__nobody",
        "train/rewards",
        "eval/code/acc",
        "loss",
        "time/",
    ],
)
def test_keys_outside_the_schema_are_refused(key):
    with pytest.raises(M.SchemaError, match="not in the schema"):
        M.parse(key, TASKS)


def test_every_documented_stat_has_a_description():
    for table in (M.TASK_STATS, M.GRAD_STATS, M.GRAD_SCOPE_STATS, M.GAIN_STATS, M.TRAIN_STATS):
        assert all(isinstance(v, str) and v for v in table.values())
