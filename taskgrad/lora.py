"""LoRA adapters through peft (``model.lora.r > 0``; the ``lora`` extra).

``apply_lora`` wraps the loaded policy in a ``peft`` model whose only trainable parameters are
the adapters A, B of the target modules (W x + (alpha / r) B A x). Everything that follows reads
``requires_grad`` and so lives in **adapter space**: the optimizer, the group buffers and every
gradient diagnostic (norms, cosines, shares and the Gram a strategy balances are those of the
adapters' gradients, not of the full weights; gradients.py), the buffer-size check, and the
checkpoints, which ``save_pretrained`` writes as the adapter only (``adapter_config.json``,
``adapter_model.safetensors``) next to the tokenizer. A resumed run loads the base model from its
original path and the adapter from the checkpoint.

Rollout engines: ``transformers`` samples from the peft model itself; the vLLM engine receives
**merged** weights, W + (alpha / r) B A per target module under the base checkpoint's names
(``merged_weights``), through the same push as full fine-tuning. Why not vLLM's own LoRA serving
(``LoRARequest``): it needs ``enable_lora``/``max_lora_rank`` at build and a new adapter directory
per step, and its CPU build was not tested with it here; the merged push is exact (tested on CPU:
engine and trainer log-probs agree after LoRA steps) and costs a full-size push per step.

Adapters start as B = 0, so the first step's gradients reach B only. ``dropout > 0`` makes the
trainer's recomputed log-probs random (the rollout engine samples without dropout); 0 is the
default.
"""

from __future__ import annotations

from typing import Any

import torch

from taskgrad.config import LoraConfig
from taskgrad.schema import ConfigError


def require_peft() -> None:
    """A one-line error naming the extra when peft is missing."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ConfigError(
            "model.lora: LoRA needs peft, which is not installed: pip install 'taskgrad[lora]'"
        ) from None


def is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


def apply_lora(model: torch.nn.Module, cfg: LoraConfig, adapter: str | None = None) -> Any:
    """``model`` with trainable LoRA adapters: new ones, or those saved in ``adapter`` (resume)."""
    require_peft()
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model

    if adapter is not None:
        return PeftModel.from_pretrained(model, adapter, is_trainable=True)
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    names = {n.rsplit(".", 1)[-1] for n in linear}
    missing = [t for t in cfg.target_modules if t not in names]
    if missing:
        raise ConfigError(
            f"model.lora.target_modules: {', '.join(missing)} is not a linear module of the "
            f"model; its linear modules: {', '.join(sorted(names))}"
        )
    config = PeftLoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM",
    )  # fmt: skip
    return get_peft_model(model, config)


@torch.no_grad()
def merged_weights(model: Any) -> list[tuple[str, torch.Tensor]]:
    """The base model's parameters under its checkpoint names, each target module's weight with
    its adapter merged in (W + scale B A, peft's own ``get_delta_weight``); adapters unchanged.

    A tied ``lm_head`` appears once, as the embedding (as ``named_parameters`` gives it).
    """
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    layers = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    out = []
    for name, p in base.named_parameters():
        if ".lora_" in name:
            continue
        owner, _, leaf = name.rpartition(".base_layer.")
        tensor = p.detach()
        if owner in layers and leaf == "weight":
            layer = layers[owner]
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    tensor = tensor + layer.get_delta_weight(adapter).to(tensor.dtype)
            name = f"{owner}.{leaf}"
        elif owner in layers:
            name = f"{owner}.{leaf}"
        out.append((name, tensor))
    return out
