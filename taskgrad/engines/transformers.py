"""The ``transformers`` backend: ``taskgrad.rollout.generate`` on the trainer's own model.

It samples from the live policy, so ``push_weights`` has nothing to copy, and ``transformers``
has no sleep mode to offer: both are no-ops. It reports no sampling log-probs
(``Rollout.rollout_logprobs`` stays None): the sampler and the trainer are the same forward pass
up to batching, so the trainer's recomputed log-probs serve as the behaviour policy's.
"""

from __future__ import annotations

from typing import Any

from taskgrad.engines import ROLLOUT_BACKENDS
from taskgrad.rollout import Rollout, generate
from taskgrad.tasks import Sample


class TransformersEngine:
    name = "transformers"

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
    ) -> Rollout:
        return generate(
            self.model, self.tokenizer, samples, task_index, half=half,
            group_size=group_size, max_new_tokens=max_new_tokens, temperature=temperature,
            top_p=top_p, seed=seed, chat_template=chat_template,
            max_prompt_tokens=max_prompt_tokens, generation_batch=self.generation_batch,
            greedy=greedy,
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


@ROLLOUT_BACKENDS.register("transformers")
def build_transformers_engine(
    *, model: Any, tokenizer: Any, generation_batch: int = 256, **_: Any
) -> TransformersEngine:
    return TransformersEngine(model, tokenizer, generation_batch=generation_batch)
