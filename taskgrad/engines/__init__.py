"""Rollout engines: the sampling backends behind one interface, chosen by ``rollout.backend``.

An engine turns prompts into a ``Rollout`` (the batch layout of ``taskgrad.rollout``) and is kept
in step with the trainer's weights:

    engine = build_engine("vllm", model=model, tokenizer=tokenizer, model_path=path, seed=cfg.seed)
    rollout = engine.generate(samples, task_index, group_size=..., ...)   # every step
    ...backward, optimizer step...
    engine.push_weights(model)                                             # after every step

Backends (``ROLLOUT_BACKENDS``):

* ``transformers`` (``engines/transformers.py``): ``transformers.generate`` on the trainer's own
  model, exactly ``taskgrad.rollout.generate``; ``push_weights`` has nothing to do.
* ``vllm`` (``engines/vllm.py``): a colocated ``vllm.LLM`` built from the model directory; it also
  returns the sampled tokens' log-probs (``Rollout.rollout_logprobs``). Importing this package does
  not import vLLM; building that engine does.

Pure helpers for the train/rollout mismatch (per-task |delta log p|, truncated importance weights)
live in ``engines/mismatch.py``; they need no engine.

Wiring into the loop (done in train.py / trainer.py as listed; ``needs_push`` lets the loop skip
pushes to an engine that samples from the live model):

* config: ``rollout.backend: Literal["transformers", "vllm"]``, the vLLM options above (e.g.
  ``rollout.vllm: dict`` passed as keywords), ``grpo.rollout_is_cap: float | None`` (None: no
  correction).
* setup: ``build_engine(cfg.rollout.backend, model=unwrapped, tokenizer=tokenizer,
  model_path=weights_path, dtype=cfg.model.dtype, seed=cfg.seed,
  generation_batch=cfg.rollout.generation_batch, ...)``. Given ``model``, the vLLM engine pushes
  its weights once, so resuming from a checkpoint is covered whatever directory it was built from.
* each step: ``engine.generate(...)`` instead of ``generate(...)`` (same arguments minus the model,
  tokenizer and ``generation_batch``); ``engine.push_weights(unwrapped)`` after the step's last
  optimizer step (before evaluation, which may then sample from the engine too); on GPU with sleep
  mode, ``engine.sleep()`` after the rollout and ``wake_up`` is automatic.
* loss: with ``rollout.rollout_logprobs`` present, the first inner update's ``old_logprobs`` and
  ``rollout_logprobs`` give ``truncated_importance_weights`` (per token, detached) that multiply
  ``policy_loss``'s per-token surrogate before the aggregation weights; being fixed per token, they
  keep task-pure micro-batch gradients summing exactly to the batch gradient.
* metrics: ``logprob_mismatch(old_logprobs, rollout.rollout_logprobs, rollout.response_mask,
  rollout.task_index, task_names)`` once per step.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from taskgrad.registry import Registry
from taskgrad.rollout import Rollout
from taskgrad.tasks import Sample


@runtime_checkable
class RolloutEngine(Protocol):
    """What the training loop needs from a sampling backend."""

    name: str
    needs_push: bool  # False: it samples from the live model, push_weights has nothing to do

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
    ) -> Rollout: ...

    def push_weights(self, model: Any) -> float:
        """Make the engine sample from ``model``'s current parameters; returns seconds taken."""
        ...

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...

    def close(self) -> None: ...


# A factory takes keyword arguments only: model, tokenizer, model_path, dtype, seed, plus its own
# options; each backend ignores what it does not need (see build_engine).
ROLLOUT_BACKENDS: Registry[Any] = Registry("rollout backend")


def build_engine(backend: str, **kwargs: Any) -> RolloutEngine:
    """The engine registered as ``backend``, built from keyword arguments.

    Common keywords: ``model`` (the trainer's policy, unwrapped), ``tokenizer``, ``model_path``
    (the directory the trainer loaded), ``dtype`` ("float32", ...), ``seed``. Backend options:
    ``generation_batch`` (transformers); ``kv_cache_gib``, ``gpu_memory_utilization``,
    ``max_model_len``, ``enforce_eager``, ``enable_sleep_mode``, ``engine_kwargs`` (vllm).
    """
    return ROLLOUT_BACKENDS.get(backend)(**kwargs)


# Registration happens where each backend is defined.
from taskgrad.engines import transformers as _transformers  # noqa: E402, F401
from taskgrad.engines import vllm as _vllm  # noqa: E402, F401

__all__ = ["ROLLOUT_BACKENDS", "RolloutEngine", "build_engine"]
