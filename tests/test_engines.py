"""Rollout engines without vLLM: the registry, the transformers engine, the mismatch helpers."""

from __future__ import annotations

import math

import pytest
import torch

from taskgrad.engines import ROLLOUT_BACKENDS, RolloutEngine, build_engine
from taskgrad.engines.mismatch import logprob_mismatch, truncated_importance_weights
from taskgrad.rollout import generate
from taskgrad.tasks import Sample


def test_both_backends_are_registered_without_importing_vllm():
    assert ROLLOUT_BACKENDS.names() == ["transformers", "vllm"]
    with pytest.raises(KeyError, match="valid: transformers, vllm"):
        build_engine("sglang")


def test_transformers_engine_is_generate(small_model, tokenizer):
    small_model.float()
    engine = build_engine("transformers", model=small_model, tokenizer=tokenizer,
                          model_path="unused", generation_batch=3)  # fmt: skip
    assert isinstance(engine, RolloutEngine)
    samples = [Sample("t", "12+3=", "15"), Sample("t", "a=1 b=2; a+b?", "3")]
    kwargs = dict(group_size=2, max_new_tokens=6, temperature=0.9, top_p=1.0, seed=5)
    ours = engine.generate(samples, [0, 1], **kwargs)
    theirs = generate(small_model, tokenizer, samples, [0, 1], generation_batch=3, **kwargs)
    assert torch.equal(ours.input_ids, theirs.input_ids)
    assert ours.completions == theirs.completions
    assert ours.rollout_logprobs is None
    assert engine.push_weights(small_model) == 0.0


def rows(values: list[list[float]]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_logprob_mismatch_per_task_over_response_tokens_only():
    trainer = rows([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0], [-0.5, -0.5, -0.5]])
    rollout = rows([[-1.1, -2.0, -9.0], [-1.3, -1.0, 0.0], [-0.5, -0.5, -0.5]])
    mask = rows([[1, 1, 0], [1, 1, 0], [0, 0, 0]])  # the -9.0 lies past EOS
    task_index = torch.tensor([0, 1, 2])
    out = logprob_mismatch(trainer, rollout, mask, task_index, ["a", "b", "c"])
    assert out["task/a/logprob_diff_mean"] == pytest.approx(0.05)
    assert out["task/a/logprob_diff_max"] == pytest.approx(0.1)
    assert out["task/b/logprob_diff_max"] == pytest.approx(0.3)
    assert "task/c/logprob_diff_mean" not in out  # no response tokens
    assert out["train/logprob_diff_mean"] == pytest.approx(0.1)  # (0.1 + 0 + 0.3 + 0) / 4
    assert out["train/logprob_diff_max"] == pytest.approx(0.3)


def test_truncated_importance_weights():
    old = rows([[0.0, -1.0, -5.0, 1000.0]]).requires_grad_()
    rollout = rows([[-0.5, -1.0, -1.0, 0.0]])
    mask = rows([[1, 1, 1, 0]])
    w = truncated_importance_weights(old, rollout, mask, cap=1.5)
    assert not w.requires_grad
    assert w[0, 0] == pytest.approx(1.5)  # exp(0.5) = 1.65 > cap
    assert w[0, 1] == pytest.approx(1.0)
    assert w[0, 2] == pytest.approx(math.exp(-4.0))  # no lower clamp
    assert w[0, 3] == 0.0  # off the mask (and no inf * 0 = nan from the huge ratio)
    unmasked = truncated_importance_weights(old, rollout, cap=2.0)
    assert torch.isfinite(unmasked).all() and unmasked[0, 3] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="cap"):
        truncated_importance_weights(old, rollout, cap=0.0)
