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
