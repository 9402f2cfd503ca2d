"""The ``transformers`` backend: ``taskgrad.rollout.generate`` on the trainer's own model.

It samples from the live policy, so ``push_weights`` has nothing to copy, and ``transformers``
has no sleep mode to offer: both are no-ops. It reports no sampling log-probs
(``Rollout.rollout_logprobs`` stays None): the sampler and the trainer are the same forward pass
up to batching, so the trainer's recomputed log-probs serve as the behaviour policy's.

``ReplicaEngine`` is the same backend for a policy sharded by FSDP2 (distributed.py): generation
cannot run on the sharded model (ranks sampling different prompts would call its collectives a
different number of times), so each rank keeps an unsharded copy to sample from, and
``push_weights`` gathers the trainer's parameters into it after every optimizer step (every rank
must call it). It costs one more copy of the weights per rank; at scale the vLLM engine holds
that copy anyway.
"""

from __future__ import annotations

from typing import Any

from taskgrad.engines import ROLLOUT_BACKENDS
from taskgrad.rollout import Rollout, generate
from taskgrad.tasks import Sample


class TransformersEngine:
    name = "transformers"
    needs_push = False  # it samples from the live model

    def __init__(self, model: Any, tokenizer: Any, generation_batch: int = 256) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.generation_batch = generation_batch

    def generate(
        self,
        samples: list[Sample],
        task_index: list[int],
        *,
        half: list[int] | None = None,
        group_size: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int,
        chat_template: str = "auto",
        max_prompt_tokens: int = 512,
        greedy: bool = False,
        prompt_ids: list[int] | None = None,
    ) -> Rollout:
        return generate(
            self.model, self.tokenizer, samples, task_index, half=half,
            group_size=group_size, max_new_tokens=max_new_tokens, temperature=temperature,
            top_p=top_p, seed=seed, chat_template=chat_template,
            max_prompt_tokens=max_prompt_tokens, generation_batch=self.generation_batch,
            greedy=greedy, prompt_ids=prompt_ids,
        )  # fmt: skip

    def push_weights(self, model: Any) -> float:
        """Follow ``model`` (the engine samples from whatever model it was last given)."""
        self.model = model
        return 0.0

    def sleep(self) -> None:
        pass

    def wake_up(self) -> None:
        pass

    def close(self) -> None:
        pass


class ReplicaEngine(TransformersEngine):
    """``generate`` on an unsharded copy of an FSDP2-sharded policy (see the module docstring)."""

    needs_push = True

    def push_weights(self, model: Any) -> float:
        """Copy ``model``'s whole parameters into the replica (a collective under FSDP2)."""
        import time

        import torch

        from taskgrad.distributed import full_named_parameters

        start = time.perf_counter()
        own = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in full_named_parameters(model):
                own[name].copy_(value)
        return time.perf_counter() - start


@ROLLOUT_BACKENDS.register("transformers")
def build_transformers_engine(
    *, model: Any, tokenizer: Any, generation_batch: int = 256, **_: Any
) -> TransformersEngine:
    return TransformersEngine(model, tokenizer, generation_batch=generation_batch)
