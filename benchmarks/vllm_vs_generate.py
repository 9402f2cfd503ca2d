"""Rollout throughput: the vLLM engine vs transformers ``generate`` on the embedded tiny model.

Both backends sample the same rollout batch (the default config's: 8 prompts of each of the four
default tasks, G = 8 completions each, 12 new tokens, temperature 1) from the same weights in
float32, one after the other (never at once: they would share the cores). Each is warmed up once,
then timed ``repeats`` times with a new seed each time. Throughput counts response tokens (up to
and including EOS), the tokens a training step uses; each backend counts its own, since sampled
completions differ in length. The ratio is of the two medians from this one run. Also printed:
the per-task mismatch between the last vLLM rollout's log-probs and the trainer's recomputation,
engine start time and the median of ``repeats`` weight pushes.

    python benchmarks/vllm_vs_generate.py [prompts_per_task=8] [group=8] [max_new=12] [repeats=5]
    python benchmarks/vllm_vs_generate.py loop=10      # in the training loop instead

``loop=N``: the same comparison inside the training loop (``train_step`` of the default config
with ``rollout.backend`` transformers and vllm, one trainer each, steps interleaved A B A B so
that both see the same machine load): rollout tokens/s = the step's response tokens /
``time/rollout`` (sampling only: the weight push after each step is ``time/push``, printed
apart), medians over N steps after one warm-up step each.

Needs vLLM (the ``.ci/vllm`` venv); ``VLLM_CPU_KVCACHE_SPACE`` (GiB) sizes its KV cache on CPU.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> None:
    import torch

    from taskgrad.config import Config
    from taskgrad.engines import build_engine
    from taskgrad.engines.mismatch import logprob_mismatch
    from taskgrad.grpo import logprobs_and_entropy
    from taskgrad.policy import ensure_tiny_model, load_policy
    from taskgrad.tasks import build_tasks

    opts = {"prompts_per_task": 8, "group": 8, "max_new": 12, "repeats": 5, "loop": 0}
    for arg in argv:
        key, value = arg.split("=", 1)
        if key not in opts:
            raise SystemExit(f"unknown option {key!r}; valid: {', '.join(opts)}")
        opts[key] = int(value)

    if opts["loop"]:
        return in_the_loop(opts)
    cfg = Config()
    tasks = build_tasks(cfg.tasks, eval_size=cfg.eval.size, seed=cfg.seed)
    path = str(ensure_tiny_model(cfg.model, cfg.tasks, tasks))
    model, tokenizer = load_policy(path, cfg.model)
    model.eval()
    rng = random.Random(0)
    samples, task_index = [], []
    for k, task in enumerate(tasks):
        for _ in range(opts["prompts_per_task"]):
            samples.append(task.sample(rng))
            task_index.append(k)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {path} ({n_params / 1e6:.2f}M parameters, float32)")
    print(
        f"batch: {len(samples)} prompts x G={opts['group']} = {len(samples) * opts['group']} "
        f"sequences, {opts['max_new']} new tokens max, torch threads {torch.get_num_threads()}"
    )

    start = time.perf_counter()
    engines = {
        "transformers": build_engine("transformers", model=model, tokenizer=tokenizer),
        "vllm": build_engine("vllm", model_path=path, tokenizer=tokenizer, seed=cfg.seed),
    }
    vllm_start = time.perf_counter() - start

    results = {}
    for name, engine in engines.items():
        times, tokens = [], []
        for rep in range(opts["repeats"] + 1):
            t0 = time.perf_counter()
            rollout = engine.generate(
                samples, task_index, group_size=opts["group"], max_new_tokens=opts["max_new"],
                temperature=1.0, top_p=1.0, seed=rep,
            )  # fmt: skip
            elapsed = time.perf_counter() - t0
            if rep:  # the first call warms up
                times.append(elapsed)
                tokens.append(float(rollout.response_mask.sum()))
        rates = [n / t for n, t in zip(tokens, times, strict=True)]
        results[name] = statistics.median(rates)
        print(
            f"{name:>12}: {statistics.median(rates):9.0f} tokens/s (median of {len(rates)}; "
            f"min {min(rates):.0f}, max {max(rates):.0f}), {statistics.median(times):.3f} s "
            f"per batch, {statistics.median(tokens):.0f} response tokens"
        )
    print(f"ratio vllm / transformers: {results['vllm'] / results['transformers']:.2f}x")

    # The last vLLM rollout's reported log-probs against the trainer's recomputation.
    n_new = rollout.response_mask.shape[1]
    with torch.no_grad():
        inputs = rollout.rows(torch.arange(rollout.input_ids.shape[0]))
        logits = model(**inputs, logits_to_keep=n_new + 1).logits[:, :-1]
        trainer, _ = logprobs_and_entropy(logits / 1.0, rollout.completion_ids)
    stats = logprob_mismatch(
        trainer, rollout.rollout_logprobs, rollout.response_mask, rollout.task_index,
        [t.name for t in tasks],
    )  # fmt: skip
    print("log-prob |trainer - vllm| per response token (temperature 1):")
    for key in sorted(k for k in stats if k.endswith("_mean")):
        name = key.removesuffix("/logprob_diff_mean")
        print(f"  {name}: mean {stats[key]:.2e}, max {stats[name + '/logprob_diff_max']:.2e}")

    vllm = engines["vllm"]
    pushes = [vllm.push_weights(model) for _ in range(opts["repeats"])]
    print(f"vllm engine start: {vllm_start:.1f} s")
    print(
        f"vllm push_weights: {statistics.median(pushes) * 1e3:.1f} ms median of {len(pushes)} "
        f"(min {min(pushes) * 1e3:.1f}, max {max(pushes) * 1e3:.1f})"
    )
    vllm.close()


def in_the_loop(opts: dict[str, int]) -> None:
    """Rollout tokens/s of both backends inside ``train_step`` (see the module docstring)."""
    import tempfile

    import torch

    from taskgrad.config import load_config
    from taskgrad.train import train_step
    from taskgrad.trainer import setup

    base = [
        f"rollout.prompts_per_task={opts['prompts_per_task']}",
        f"rollout.group_size={opts['group']}", f"rollout.max_new_tokens={opts['max_new']}",
        "eval.every=0", "diagnostics.probe_every=0", "progress=false",
    ]  # fmt: skip
    rates: dict[str, list[float]] = {"transformers": [], "vllm": []}
    pushes: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {
            name: setup(load_config(None, [*base, f"rollout.backend={name}"]),
                        Path(tmp) / name, resume=False)
            for name in rates
        }  # fmt: skip
        print(f"in the loop: default config, {opts['loop']} steps per backend after a warm-up, "
              f"torch threads {torch.get_num_threads()}")  # fmt: skip
        for step in range(1, opts["loop"] + 2):
            for name, trainer in trainers.items():
                m = train_step(trainer, step)
                tokens = sum(m[f"task/{t}/prompts"] * opts["group"] * m[f"task/{t}/response_length"]
                             for t in trainer.task_names)  # fmt: skip
                if step > 1:
                    rates[name].append(tokens / m["time/rollout"])
                    if name == "vllm":
                        pushes.append(m["time/push"])
        trainers["vllm"].engine.close()
    for name, values in rates.items():
        print(
            f"{name:>12}: {statistics.median(values):9.0f} rollout tokens/s in the loop "
            f"(median of {len(values)}; min {min(values):.0f}, max {max(values):.0f})"
        )
    ratio = statistics.median(rates["vllm"]) / statistics.median(rates["transformers"])
    print(
        f"ratio vllm / transformers in the loop: {ratio:.2f}x; vllm push after each step: "
        f"median {statistics.median(pushes) * 1e3:.1f} ms"
    )


if __name__ == "__main__":  # vLLM's CPU worker is spawned and re-imports __main__
    main(sys.argv[1:])
