"""Worker-side half of the vLLM engine's weight push (runs inside vLLM's worker process).

vLLM mixes this class into its worker when the engine is built with
``worker_extension_cls="taskgrad.engines.vllm_worker.TaskgradWorkerExtension"`` (vLLM's extension
point for RLHF weight sync); the trainer side calls its methods by name through
``LLM.collective_rpc``. Method names carry a ``taskgrad_`` prefix so they cannot shadow a worker
method (vLLM refuses such a clash).

The load itself is vLLM 0.32's in-place reload, ``Worker.reload_weights(weights_iterator=...)``:
it takes checkpoint-format (Hugging Face) names and tensors, runs the model's own
``load_weights`` layer by layer, then re-runs each layer's ``process_weights_after_loading``. The
second half matters on CPU, where linear layers run from oneDNN / packed copies of their weights
made after loading (the fused ``qkv_proj.weight`` parameter is even emptied): a bare
``model.load_weights`` (what TRL's colocate mode calls on GPU) would leave those copies stale.

One departure, a workaround for what vLLM 0.32 does with tied embeddings (the tiny Qwen2 and many
small models tie ``lm_head`` to ``embed_tokens``): the checkpoint has no ``lm_head.weight``, so the
layer-wise reload loads nothing into ``ParallelLMHead``, warns "ParallelLMHead: Failed to load
weights" and puts back its old processed state. The parameter is shared and does hold the new
values, but on CPU the head's GEMM handle was built from the old ones, so logits stay those of
the old model (measured: sampled-token log-probs off by up to 0.47 nats after one perturbation, back
to 5e-7 once the head is re-processed). After every reload we therefore re-run
``process_weights_after_loading`` on each head whose weight is an embedding's weight.
"""

from __future__ import annotations

from typing import Any

import torch


class TaskgradWorkerExtension:
    """Methods added to vLLM's worker class (``self`` is the worker)."""

    def taskgrad_reload_weights(self, weights: list[tuple[str, torch.Tensor]]) -> dict[str, Any]:
        """Load ``weights`` (checkpoint names) in place; returns what was done, for the caller."""
        from vllm.config import set_current_vllm_config

        self.reload_weights(weights_iterator=weights)  # type: ignore[attr-defined]
        with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
            refreshed = _refresh_tied_heads(self.model_runner.model)  # type: ignore[attr-defined]
        return {"tensors": len(weights), "tied_heads_refreshed": refreshed}

    def taskgrad_param_checksum(self) -> float:
        """Sum of every parameter as seen by the engine (a cheap did-it-change probe for tests)."""
        model = self.model_runner.model  # type: ignore[attr-defined]
        return float(sum(p.detach().double().sum() for p in model.parameters()))


def _refresh_tied_heads(model: torch.nn.Module) -> list[str]:
    """Re-process every ``ParallelLMHead`` that shares its weight with an input embedding."""
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        ParallelLMHead,
        VocabParallelEmbedding,
    )

    embedding_weights = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead)
    }
    refreshed = []
    for name, module in model.named_modules():
        if isinstance(module, ParallelLMHead) and id(module.weight) in embedding_weights:
            module.quant_method.process_weights_after_loading(module)
            refreshed.append(name)
    return refreshed
