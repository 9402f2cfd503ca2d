"""The real loop: every registered strategy through two real steps, and diagnostics that do not
change what is trained."""

from __future__ import annotations

import math

import pytest
import torch

from taskgrad import metrics as M
from taskgrad.balancing import STRATEGIES
from taskgrad.config import TinyModelConfig, load_config
from taskgrad.policy import build_char_tokenizer, build_tiny_model
from taskgrad.train import train_step
from taskgrad.trainer import setup
from tests.test_train import PARITY

TASKS = ["left", "right", "third"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    tokenizer = build_char_tokenizer()
    tiny = TinyModelConfig(
        hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64
    )
    build_tiny_model(tokenizer, tiny, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def overrides(model_dir, tmp_path, *extra: str) -> list[str]:
    tasks = ", ".join(f"{{name: {t}, type: '{PARITY}'}}" for t in TASKS)
    return [
        f"model={model_dir}", f"tasks=[{tasks}]", "rollout.prompts_per_task=4",
        "rollout.group_size=4", "rollout.max_new_tokens=3", "eval.every=0", "eval.size=4",
        "diagnostics.probe_every=0", "progress=false", "optim.lr=1e-3", f"runs_root={tmp_path}",
        *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_runs_real_steps(name, model_dir, tmp_path):
    cfg = load_config(None, overrides(model_dir, tmp_path, f"balance.strategy={name}", "steps=2"))
    trainer = setup(cfg, tmp_path / "run", resume=False)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    for step in (1, 2):
        metrics = train_step(trainer, step)
        for key in metrics:
            M.parse(key, TASKS)
        weights = [metrics[M.balance_key(t, "weight")] for t in TASKS]
        assert all(math.isfinite(w) for w in weights), weights
        if metrics[M.grad_scope_key("full", "total_sqnorm")] > 0:
            shares = [metrics[M.grad_key("full", t, "update_share")] for t in TASKS]
            assert sum(shares) == pytest.approx(1.0, abs=1e-6)
        sampling = [metrics.get(M.balance_key(t, "sampling")) for t in TASKS]
        if sampling[0] is not None:
            assert sum(sampling) == pytest.approx(1.0, abs=1e-9)
            assert trainer.sampling is not None
    after = list(trainer.model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


@pytest.mark.slow
def test_diagnostics_do_not_change_the_training_run(model_dir, tmp_path):
    """The same run with and without group buffers: the buffered sum is the plain gradient, so
    the parameters after N steps agree to float32 rounding."""
    params = []
    for enabled in (True, False):
        extra = [f"diagnostics.enabled={str(enabled).lower()}", "steps=4"]
        cfg = load_config(None, overrides(model_dir, tmp_path, *extra))
        trainer = setup(cfg, tmp_path / f"run-{enabled}", resume=False)
        for step in range(1, 5):
            train_step(trainer, step)
        params.append([p.detach().clone() for p in trainer.model.parameters()])
    diffs = [(a - b).abs().max().item() for a, b in zip(*params, strict=True)]
    scale = max(p.abs().max().item() for p in params[0])
    print(f"max |param difference| after 4 steps: {max(diffs):.2e} (largest |param| {scale:.2f})")
    assert max(diffs) <= 1e-5 * scale


def test_task_momenta_add_up_to_adamw_first_moment(model_dir, tmp_path):
    """sum_k m_k equals AdamW's exp_avg over the scope after steps with clipping, weight decay,
    two inner updates and unequal task weights (so every update's parts count)."""
    extra = [
        "steps=3", "grpo.inner_updates=2", "optim.max_grad_norm=0.05", "optim.weight_decay=0.1",
        "balance.strategy=static", "balance.options={weights: [2.0, 0.5, 1.0]}",
    ]  # fmt: skip
    cfg = load_config(None, overrides(model_dir, tmp_path, *extra))
    trainer = setup(cfg, tmp_path / "run", resume=False)
    for step in (1, 2, 3):
        metrics = train_step(trainer, step)
    groups, momentum = trainer.groups, trainer.momentum
    assert momentum is not None and momentum.valid
    exp_avg = groups.flat([trainer.optimizer.state[p]["exp_avg"] for _, p in groups.params])
    total = momentum.buffer.sum(0)
    assert torch.allclose(total, exp_avg, rtol=1e-4, atol=1e-7 * exp_avg.abs().max().item())
    shares = [metrics[M.grad_key("full", t, "applied_share")] for t in TASKS]
    decay = metrics[M.grad_scope_key("full", "decay_share")]
    assert sum(shares) + decay == pytest.approx(1.0, abs=1e-9) and abs(decay) < 0.5


def test_per_module_weights_are_what_the_metrics_report(model_dir, tmp_path):
    """pcgrad_modular: the logged update shares are those of the update actually applied
    (per-module weights), recomputed here from the buffers."""
    from taskgrad.diagnostics.gradient import task_parts
    from taskgrad.train import (
        backward_groups,
        balance,
        make_batch,
        rollout,
        rollout_statistics,
        sample_prompts,
        score,
    )

    cfg = load_config(None, overrides(model_dir, tmp_path, "balance.strategy=pcgrad_modular"))
    trainer = setup(cfg, tmp_path / "run", resume=False)
    prompts = sample_prompts(cfg, trainer.tasks, None, 1)
    rolled = rollout(trainer, prompts, 1)
    rewards, _ = score(trainer.tasks, rolled)
    batch = make_batch(rolled, rewards, 3, loss_agg="token_mean", loss_constant=3,
                       scale_rewards=True)  # fmt: skip
    result = backward_groups(trainer, batch, None, capture=True)
    stats = rollout_statistics(batch, result.sums, False)
    balanced, _ = balance(trainer, batch, stats, 1, None)
    parts = task_parts(trainer.groups, balanced).double()  # [K, P] applied contributions
    g = parts.sum(0)
    applied = torch.cat([p.grad.reshape(-1) for _, p in trainer.groups.params]).double()
    assert torch.allclose(g, applied, rtol=1e-5, atol=1e-9)  # .grad is what the parts sum to
    from taskgrad.diagnostics.gradient import gradient_metrics

    metrics = gradient_metrics(trainer.groups, balanced, TASKS, "full", breakdown=False)
    for k, t in enumerate(TASKS):
        expected = float(parts[k] @ g / (g @ g))
        assert metrics[M.grad_key("full", t, "update_share")] == pytest.approx(expected, rel=1e-5)
    assert not balanced.uniform_over_params


def test_task_window_by_hand(model_dir, tmp_path):
    from taskgrad.train import task_window

    cfg = load_config(None, overrides(model_dir, tmp_path, "diagnostics.window=3"))
    trainer = setup(cfg, tmp_path / "run", resume=False)
    nan = float("nan")
    for r in ([0.0, 1.0, nan], [0.5, 1.0, 0.2], [1.0, 0.0, nan], [0.0, 0.5, 0.4]):
        stats = {n: torch.tensor(r, dtype=torch.float64)
                 for n in ("reward", "abs_advantage", "zero_adv_share")}  # fmt: skip
        sq = {n: torch.tensor(r, dtype=torch.float64) for n in ("sqnorm_unbiased", "sqnorm_naive")}
        window = task_window(trainer, stats, sq)
    # the last three rows: task 0 [0.5, 1, 0] mean .5 sd .5 se .5/sqrt(3); task 2 [.2, nan, .4]
    assert window.steps == 3
    assert window.mean["reward"].tolist()[0] == pytest.approx(0.5)
    assert window.se["reward"].tolist()[0] == pytest.approx(0.5 / 3**0.5)
    assert window.mean["reward"].tolist()[2] == pytest.approx(0.3)
    assert window.se["reward"].tolist()[2] == pytest.approx((0.02**0.5) / 2**0.5)
    # detectable: mean - 1.96 se > 0; task 1 [1, 0, .5]: .5 - 1.96 * .289 < 0; task 2: .3 - .196
    assert window.detectable().tolist() == [False, False, True]


def test_evaluation_schedule_outcomes_and_dedicated_measurement(model_dir, tmp_path):
    import json

    from taskgrad.train import eval_due, train

    cfg = load_config(None, overrides(model_dir, tmp_path, "steps=4", "eval.every=null",
                                      "diagnostics.measure_every=2",
                                      "diagnostics.measure_prompts=4"))  # fmt: skip
    assert [s for s in range(5) if eval_due(cfg, s)] == [0, 2, 4]
    run = train(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()]
    assert sorted({e["step"] for e in evals}) == [0, 2, 4]
    for e in evals:  # the per-prompt outcomes (correct of k samples) are the logged accuracy
        rec = next(r for r in records if r["step"] == e["step"])
        correct, k = [int(c) for c in e["correct"]], e["samples"]
        assert k == cfg.eval.samples and all(0 <= c <= k for c in correct)
        assert len(correct) == 4 and rec[M.eval_key(e["task"])] == sum(correct) / (4 * k)
    measured = [r for r in records if M.grad_key("measure_full", "left", "sqnorm_unbiased") in r]
    assert [r["step"] for r in measured] == [1, 3]
    for r in records:
        for key in r:
            M.parse(key, TASKS)


def test_sampled_evaluation_counts_k_completions_per_prompt_with_a_fixed_seed(model_dir, tmp_path):
    """eval.samples = 3: each prompt's digit counts its correct completions out of 3, the
    accuracy is their mean share, and the same model gives the same outcomes in every run."""
    import json

    from taskgrad.train import train

    outcomes = []
    for name in ("a", "b"):
        cfg = load_config(None, overrides(model_dir, tmp_path, "steps=1", "eval.samples=3",
                                          "eval.every=null"))  # fmt: skip
        run = train(cfg, tmp_path / name)
        first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
        evals = [json.loads(x) for x in (run / "evals.jsonl").read_text().splitlines()]
        for e in (e for e in evals if e["step"] == 0):
            counts = [int(c) for c in e["correct"]]
            assert e["samples"] == 3 and max(counts) <= 3
            assert first[M.eval_key(e["task"])] == pytest.approx(sum(counts) / (3 * len(counts)))
        outcomes.append([e["correct"] for e in evals if e["step"] == 0])
    assert outcomes[0] == outcomes[1]
