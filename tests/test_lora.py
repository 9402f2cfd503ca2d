"""LoRA through peft (lora.py): buffers and diagnostics over the adapters only, adapter
checkpoints that resume, merged weights that are the adapted model, one-line errors."""

from __future__ import annotations

import copy
import json
import math
import sys

import pytest
import torch

from taskgrad import metrics as M
from taskgrad.config import ConfigError, load_config
from taskgrad.train import train, train_step
from taskgrad.trainer import setup
from tests.test_loop import TASKS, model_dir, overrides  # noqa: F401  (a fixture)

pytest.importorskip("peft", reason="peft is not installed: pip install 'taskgrad[lora]'")

LORA = ["model.lora.r=4", "model.lora.alpha=8", "optim.lr=1e-2"]


def test_buffers_and_diagnostics_live_in_adapter_space(model_dir, tmp_path):  # noqa: F811
    extra = [*LORA, "steps=2", "balance.strategy=pcgrad_modular"]
    trainer = setup(load_config(None, overrides(model_dir, tmp_path, *extra)), tmp_path / "r",
                    resume=False)  # fmt: skip
    names = trainer.groups.names
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    adapters = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    assert trainer.groups.buffer.shape == (2 * len(TASKS), adapters)
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters()
              if not p.requires_grad}  # fmt: skip
    for step in (1, 2):
        metrics = train_step(trainer, step)
        for key in metrics:
            M.parse(key, TASKS)
    assert all(math.isfinite(metrics[M.grad_key("full", t, "sqnorm_naive")]) for t in TASKS)
    assert metrics[M.grad_scope_key("full", "total_sqnorm")] > 0
    for n, p in trainer.model.named_parameters():  # the base never moves
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    versions = json.loads((tmp_path / "r" / "versions.json").read_text())
    assert versions["trainable_parameters"] == adapters < versions["parameters"]


def test_merged_weights_are_the_adapted_model(model_dir, tmp_path):  # noqa: F811
    """What the vLLM engine receives: the base model loaded with ``merged_weights`` computes
    the peft model's logits (after a step, so that B != 0)."""
    from taskgrad.engines.vllm import engine_weights

    cfg = load_config(None, overrides(model_dir, tmp_path, *LORA, "steps=1"))
    trainer = setup(cfg, tmp_path / "r", resume=False)
    train_step(trainer, 1)
    peft_model = trainer.policy.eval()
    assert any(float(p.detach().abs().max()) > 0 for n, p in peft_model.named_parameters()
               if ".lora_B." in n)  # fmt: skip
    plain = copy.deepcopy(peft_model.get_base_model())
    for module in plain.modules():  # strip the adapters: a plain model with base names
        for name, child in list(module.named_children()):
            if hasattr(child, "base_layer"):
                setattr(module, name, child.base_layer)
    weights = dict(engine_weights(peft_model))
    assert not any("lora_" in n or "base_layer" in n for n in weights)
    assert set(weights) == {n for n, _ in plain.named_parameters()}
    plain.load_state_dict(weights, strict=False)
    ids = torch.tensor([[2, 40, 50, 60, 70]])
    with torch.no_grad():
        ours, theirs = plain(input_ids=ids).logits, peft_model(input_ids=ids).logits
    assert (ours - theirs).abs().max() < 1e-5
    base = dict(peft_model.get_base_model().named_parameters())
    q = next(n for n in weights if n.endswith("q_proj.weight"))
    assert not torch.equal(weights[q], base[q.replace(".weight", ".base_layer.weight")])


@pytest.mark.slow
def test_adapter_checkpoints_resume(model_dir, tmp_path):  # noqa: F811
    """Checkpoints hold the adapter only; resuming from one continues the uninterrupted run."""
    extra = [*LORA, "steps=3", "checkpoint_every=2", "keep_checkpoints=2"]
    full = train(load_config(None, overrides(model_dir, tmp_path, *extra)), tmp_path / "full")
    ckpt = full / "checkpoints" / "step_000002"
    assert (ckpt / "adapter_config.json").exists() and (ckpt / "adapter_model.safetensors").exists()
    assert not (ckpt / "model.safetensors").exists()
    cut = tmp_path / "cut"
    cut_cfg = load_config(None, overrides(model_dir, tmp_path, *extra[:-2], "steps=2",
                                          "checkpoint_every=2"))  # fmt: skip
    train(cut_cfg, cut)
    (cut / "config.yaml").write_text((full / "config.yaml").read_text())  # now a 3-step run
    from taskgrad.rundir import RunDir

    train(RunDir.load_config(cut), cut, resume=True)
    last = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()][-1]
    again = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()][-1]
    for key, value in last.items():
        if not key.startswith("time/") and isinstance(value, float):
            assert again[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key


def test_lora_without_peft_is_one_line(model_dir, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    cfg = load_config(None, overrides(model_dir, tmp_path, *LORA))
    with pytest.raises(ConfigError, match=r"pip install 'taskgrad\[lora\]'") as info:
        setup(cfg, tmp_path / "r", resume=False)
    assert "\n" not in str(info.value)


def test_unknown_target_module_is_one_line(model_dir, tmp_path):  # noqa: F811
    cfg = load_config(None, overrides(model_dir, tmp_path, *LORA, "model.lora.target_modules=[qq]"))
    with pytest.raises(ConfigError, match=r"model\.lora\.target_modules: qq is not a linear"):
        setup(cfg, tmp_path / "r", resume=False)
