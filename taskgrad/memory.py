"""Expected memory per GPU of a config on its architecture: the arithmetic, not a measurement.

Counted, in bytes per GPU: the policy's weights (model dtype), gradients and AdamW's two moments
(the trainable parameters' dtype: peft keeps LoRA adapters in float32), the float32 group
buffers (2K rows, plus K task-momentum rows when ``diagnostics.momentum_on()``) of the scope's
trainable parameters, the reference model (``grpo.kl_coef > 0``), an FSDP2 transformers
replica, and the colocated vLLM engine's share, ``gpu_memory_utilization`` x the GPU (its
weights and KV cache). Under ``parallel.mode=fsdp2`` weights, gradients, moments and buffers are
divided over the GPUs; under ddp nothing is.

Two phases: rollout (weights, moments, engine awake) and training (weights, gradients, moments,
buffers; the engine's share unless it sleeps, ``rollout.vllm.enable_sleep_mode``, which vLLM
supports on CUDA). The peak is the larger. Activations, the allocator's slack, CUDA context and
fragmentation are *not* counted: leave 10-20 % free. benchmarks/gpu_check.py measures the real
thing where a GPU is lent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from taskgrad.config import Config
from taskgrad.gradients import scope_names

GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU by part."""

    weights: float
    gradients: float
    optimizer: float
    buffers: float
    engine: float
    extra: float  # reference model and/or FSDP2 replica
    engine_sleeps: bool

    @property
    def rollout(self) -> float:
        return self.weights + self.optimizer + self.engine + self.extra

    @property
    def training(self) -> float:
        engine = 0.0 if self.engine_sleeps else self.engine
        return self.weights + self.gradients + self.optimizer + self.buffers + engine + self.extra

    @property
    def peak(self) -> float:
        return max(self.rollout, self.training)


def lora_parameters(model: torch.nn.Module, targets: list[str], r: int) -> dict[str, int]:
    """Adapter size r (in + out) of each target linear module, by the module's name."""
    return {
        name: r * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets
    }


def estimate(
    cfg: Config, model: torch.nn.Module, gpus: int = 1, gpu_bytes: float = 80e9
) -> MemoryEstimate:
    """Per-GPU memory of ``cfg`` on ``model`` (built on the meta device: shapes only)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    k = len(cfg.tasks)
    rows = 2 * k + (k if cfg.diagnostics.momentum_on() else 0)
    lora = cfg.model.lora
    if lora.r > 0:  # adapters in float32; the buffers cover them all (scope over adapters)
        adapters = lora_parameters(model, lora.target_modules, lora.r)
        trainable = 4 * sum(adapters.values())
        scoped = sum(adapters.values()) if cfg.diagnostics.scope == "full" else 0
    else:
        trainable = weights
        named = [n for n, _ in model.named_parameters()]
        keep = set(scope_names(named, cfg.diagnostics.scope))
        scoped = sum(p.numel() for n, p in model.named_parameters() if n in keep)
    shard = gpus if cfg.parallel.mode == "fsdp2" and gpus > 1 else 1
    vllm = cfg.rollout.backend == "vllm"
    engine = float(cfg.rollout.vllm.get("gpu_memory_utilization", 0.3)) * gpu_bytes if vllm else 0
    extra = weights if cfg.grpo.kl_coef > 0 else 0
    if shard > 1 and not vllm:
        extra += weights  # the unsharded copy generation runs on (engines/transformers.py)
    return MemoryEstimate(
        weights=weights / (shard if lora.r == 0 else 1),
        gradients=trainable / shard,
        optimizer=2 * trainable / shard,
        buffers=(rows * scoped * 4 if cfg.diagnostics.enabled else 0) / shard,
        engine=engine,
        extra=extra,
        engine_sleeps=vllm and bool(cfg.rollout.vllm.get("enable_sleep_mode", False)),
    )
