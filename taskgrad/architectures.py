"""The shapes of the paper's models, to build them from a config with random weights.

Nothing can be downloaded on the machines this project tests on, so tests and the GPU check build
these architectures locally (``build(name, device="meta")`` allocates nothing). The numbers are
those of each model's published ``config.json``.
"""

from __future__ import annotations

from typing import Any

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2.5-0.5B-Instruct": {
        "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
        "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
        "vocab_size": 151936, "tie_word_embeddings": True, "max_position_embeddings": 32768,
    },
    "Qwen/Qwen2.5-1.5B-Instruct": {
        "model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960,
        "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
        "vocab_size": 151936, "tie_word_embeddings": True, "max_position_embeddings": 32768,
    },
    "Qwen/Qwen2.5-3B-Instruct": {
        "model_type": "qwen2", "hidden_size": 2048, "intermediate_size": 11008,
        "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 2,
        "vocab_size": 151936, "tie_word_embeddings": True, "max_position_embeddings": 32768,
    },
    "Qwen/Qwen2.5-7B-Instruct": {
        "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
        "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
        "vocab_size": 152064, "tie_word_embeddings": False, "max_position_embeddings": 32768,
    },
    "meta-llama/Llama-3.2-3B-Instruct": {
        "model_type": "llama", "hidden_size": 3072, "intermediate_size": 8192,
        "num_hidden_layers": 28, "num_attention_heads": 24, "num_key_value_heads": 8,
        "vocab_size": 128256, "tie_word_embeddings": True, "max_position_embeddings": 131072,
    },
}  # fmt: skip


def config(name: str):
    """A transformers config of the architecture ``name`` (a hub id above)."""
    from transformers import AutoConfig

    spec = dict(ARCHITECTURES[name])
    return AutoConfig.for_model(spec.pop("model_type"), **spec)


def build(name: str, device: str = "meta", dtype=None):
    """The architecture with random weights (on the meta device: shapes only, no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        return AutoModelForCausalLM.from_config(config(name), dtype=dtype or torch.bfloat16)
