"""The split-half estimator on the real loop, against an expected gradient computed exactly.

One-token completions on a small fixed prompt set: the policy's expected GRPO gradient is then a
finite sum. With the constant aggregation (a fixed normaliser), no std scaling (Dr. GRPO) and a
group of G completions, the task's own objective has, on-policy,

    E g_k = -(G - 1) / (G L) * E_p grad J_p,   J_p = sum_o pi(o | p) r(p, o)    (L = 1 token)

(within a group, E[(r_i - rbar) grad log pi(o_i)] = (1 - 1/G) grad J_p, since the other
completions' rewards are independent of o_i and E grad log pi = 0), and E_p is uniform over the
task's training prompts. The real loop (``train_step``: sampling, halves, generation, scoring,
advantages, shares, backward per group, diagnostics) runs R steps at learning rate 0, so the
policy and the truth stay fixed; then:

- the mean of the logged ``sqnorm_unbiased`` must equal ||E g_k||^2 within 4 standard errors;
- each group row G_kh / s_kh must be an unbiased estimate of E g_k: the mean of <g_kh, E g_k>
  must equal ||E g_k||^2 within 4 standard errors (shares from the prompt counts, independently).

Halves that shared prompts, a share formula for equal halves or misaligned log-probs each bias
one of these (see the planted-bug notes in the closing checks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from taskgrad import metrics as M
from taskgrad.config import load_config
from taskgrad.policy import build_char_tokenizer, build_tiny_model
from taskgrad.tasks import Reward, Sample, Task
from taskgrad.train import train_step
from taskgrad.trainer import setup

PROMPTS = ["ab?", "cd?", "ef?", "gh?", "ij?", "kl?"]


ONE_TOKEN = "tests.test_estimator:OneToken"  # by import path: not registered globally


class OneToken(Task):
    """Test-only: reward 1 when the first character's code is in a band that depends on the
    prompt and the task's ``offset`` (about 40% of the characters)."""

    name = "one_token"

    @dataclass
    class Options:
        offset: int = 0

    def generate(self, rng):
        return Sample(self.name, rng.choice(PROMPTS), "")

    def reward(self, sample, completion):
        if not completion:
            return Reward(0.0)
        shift = self.options.offset + 2 * (PROMPTS.index(sample.prompt) % 2)
        return Reward(float((ord(completion[0]) + shift) % 5 < 2))


def expected_gradients(trainer, group_size: int) -> list[torch.Tensor]:
    """E g_k for every task, flattened over the in-scope parameters, by enumeration."""
    model, tokenizer, groups = trainer.policy, trainer.tokenizer, trainer.groups
    vocab = [tokenizer.decode([o], skip_special_tokens=True) for o in range(len(tokenizer))]
    out = []
    for task in trainer.tasks:
        held_out = {s.prompt for s in task.eval_set()}
        prompts = [p for p in PROMPTS if p not in held_out]
        model.zero_grad(set_to_none=True)
        total = 0.0
        for p in prompts:
            ids = tokenizer([p], return_tensors="pt")["input_ids"]
            probs = torch.softmax(model(input_ids=ids).logits[0, -1].double(), -1)  # [V]
            sample = Sample(task.name, p, "")
            r = torch.tensor([task.reward(sample, c).value for c in vocab], dtype=torch.float64)
            total = total + (probs * r).sum()  # J_p
        (-(group_size - 1) / group_size * total / len(prompts)).backward()
        out.append(groups.flat([p.grad for _, p in groups.params]).double())
        model.zero_grad(set_to_none=True)
    return out


@pytest.mark.slow
def test_split_half_estimator_is_unbiased_on_the_real_loop(tmp_path):
    tokenizer = build_char_tokenizer()
    model_dir = tmp_path / "model"
    build_tiny_model(tokenizer, _tiny(), seed=3).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    n, g, steps = 5, 8, 200
    cfg = load_config(None, [
        f"model={model_dir}", f"tasks=[{{name: a, type: '{ONE_TOKEN}'}}, "
        f"{{name: b, type: '{ONE_TOKEN}', options: {{offset: 3}}}}]",
        f"rollout.prompts_per_task={n}", f"rollout.group_size={g}", "rollout.max_new_tokens=1",
        "grpo.loss_agg=constant", "grpo.scale_rewards=false", "eval.every=0", "eval.size=1",
        "diagnostics.breakdown=false", "diagnostics.optimizer_geometry=false",
        "diagnostics.probe_every=0", "optim.max_grad_norm=0", "progress=false",
        f"steps={steps}", f"runs_root={tmp_path}",
    ])  # fmt: skip
    trainer = setup(cfg, tmp_path / "run", resume=False)
    trainer.scheduler.base_lrs = [0.0] * len(trainer.scheduler.base_lrs)
    for group in trainer.optimizer.param_groups:
        group["lr"] = 0.0  # the policy, and so the truth, stays fixed
    truth = expected_gradients(trainer, g)
    sq = [float(t @ t) for t in truth]
    unbiased = torch.zeros(steps, 2, dtype=torch.float64)
    projections = torch.zeros(steps, 4, dtype=torch.float64)  # <g_kh, E g_k>
    for step in range(1, steps + 1):
        metrics = train_step(trainer, step)
        for k, task in enumerate(("a", "b")):
            unbiased[step - 1, k] = metrics[M.grad_key("full", task, "sqnorm_unbiased")]
            n_k = metrics[M.task_key(task, "prompts")]
            for h in (0, 1):
                # constant aggregation: s_kh = B_kh / B, B_kh = prompts of the half x G
                n_kh = math.ceil(n_k / 2) if h == 0 else n_k // 2
                share = n_kh / (2 * n)
                row = trainer.groups.buffer[2 * k + h].double() / share
                projections[step - 1, 2 * k + h] = float(row @ truth[k])
    z = []
    for k in range(2):
        mean, se = unbiased[:, k].mean().item(), unbiased[:, k].std().item() / math.sqrt(steps)
        assert abs(mean - sq[k]) < 4 * se, (k, mean, sq[k], se)
        z.append((mean - sq[k]) / se)
        for h in (0, 1):
            col = projections[:, 2 * k + h]
            mean, se = col.mean().item(), col.std().item() / math.sqrt(steps)
            assert abs(mean - sq[k]) < 4 * se, (k, h, mean, sq[k], se)
            assert sq[k] > 8 * se  # resolvable: a 50% error in a group's scale would show
    # Both tasks' errors pooled (independent): halves that shared prompts bias both upward, by
    # their between-prompt variance (test_gradients checks the split itself exactly).
    assert abs(sum(z) / math.sqrt(2)) < 4, z


def _tiny():
    from taskgrad.config import TinyModelConfig

    return TinyModelConfig(
        hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64
    )
