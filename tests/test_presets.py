"""Presets say only what the code does: group buffers that fit the device; launches that cannot
train stop with one line."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from taskgrad import trainer as trainer_module
from taskgrad.architectures import ARCHITECTURES, build
from taskgrad.config import ConfigError, load_config, preset_names
from taskgrad.memory import estimate
from taskgrad.trainer import buffer_bytes, setup

GPU_BYTES = 80 * 10**9  # the 80 GB GPUs the presets are written for


@pytest.mark.parametrize("preset", [p for p in preset_names() if p not in ("default", "math3")])
def test_real_model_presets_fit_an_80_gb_gpu(preset):
    """Per-GPU weights, gradients, AdamW state, group buffers and the vLLM engine's share
    (taskgrad/memory.py) on the real architecture (built on the meta device: shapes only), with
    15 % left for activations; a proxy-scope preset is one whose full scope would not fit."""
    cfg = load_config(preset)
    model = build(cfg.model.name_or_path)
    gpus = 8 if cfg.parallel.mode == "fsdp2" else 1
    need = estimate(cfg, model, gpus, GPU_BYTES)
    assert need.peak < 0.85 * GPU_BYTES, (preset, need)
    k = len(cfg.tasks)
    if cfg.model.lora.r == 0:  # the estimate's buffers are the trainer's own count
        rows = 3 * k if cfg.diagnostics.momentum_on() else 2 * k
        assert need.buffers * gpus == buffer_bytes(model, cfg.diagnostics.scope, rows)[1]
    if cfg.diagnostics.scope != "full":  # and the full scope would not have fit
        full = dataclasses.replace(cfg.diagnostics, scope="full")
        assert estimate(dataclasses.replace(cfg, diagnostics=full), model, gpus).peak > GPU_BYTES
    assert cfg.model.name_or_path in ARCHITECTURES


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["parallel.mode=deepspeed"], "parallel.mode: deepspeed is not supported"),
        (["parallel.mode=fsdp2", "model.lora.r=8"], "parallel.mode: fsdp2 with LoRA"),
        (["rollout.prompts_per_task=1", "tasks=arithmetic"], "2 processes need at least 2"),
    ],
)
def test_launches_that_cannot_train_stop_with_one_line(monkeypatch, tmp_path, overrides, message):
    """Checked before anything is built or written (a 2-process launch is faked)."""
    import accelerate

    monkeypatch.setattr(accelerate.Accelerator, "num_processes", property(lambda self: 2))
    cfg = load_config(None, ["model=unused", f"runs_root={tmp_path}", *overrides])
    with pytest.raises(ConfigError, match=message) as info:
        setup(cfg, tmp_path / "run", resume=False)
    assert "\n" not in str(info.value) and not (tmp_path / "run").exists()


def test_vllm_backend_without_vllm_names_the_extra(tmp_path, tokenizer, monkeypatch):
    import sys

    from taskgrad.config import TinyModelConfig
    from taskgrad.policy import build_tiny_model

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    path = tmp_path / "model"
    tiny = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                           intermediate_size=64)  # fmt: skip
    build_tiny_model(tokenizer, tiny, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    cfg = load_config(None, [f"model={path}", "rollout.backend=vllm", "progress=false"])
    with pytest.raises(ConfigError, match=r"pip install 'taskgrad\[vllm\]'") as info:
        setup(cfg, tmp_path / "run", resume=False)
    assert "\n" not in str(info.value) and not (tmp_path / "run").exists()


def test_buffers_that_cannot_fit_stop_before_training(monkeypatch, tmp_path, tokenizer):
    from taskgrad.config import TinyModelConfig
    from taskgrad.policy import build_tiny_model

    path = tmp_path / "model"
    tiny = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                           intermediate_size=64)  # fmt: skip
    build_tiny_model(tokenizer, tiny, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    monkeypatch.setattr(trainer_module, "device_free_bytes", lambda device: 10_000)
    cfg = load_config(None, [f"model={path}", f"runs_root={tmp_path}", "progress=false"])
    with pytest.raises(ConfigError, match=r"diagnostics\.scope: the group buffers need .* GiB"):
        setup(cfg, tmp_path / "run", resume=False)
    cfg = load_config(None, [f"model={path}", "diagnostics.enabled=false", "progress=false"])
    assert setup(cfg, tmp_path / "run2", resume=False).groups is None  # no buffers, no check


def test_buffer_bytes_by_hand():
    model = torch.nn.Linear(3, 2)  # 6 + 2 parameters, float32
    assert buffer_bytes(model, "full", 4) == (8, 8 * 4 * 4)
