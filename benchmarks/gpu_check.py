"""Memory and speed of the real loop on real architectures, with nothing downloaded.

For each model (Qwen2.5-0.5B / 1.5B / 7B shapes from ``taskgrad/architectures.py``, random
weights in bfloat16, saved with the character tokenizer so that the trainer and vLLM load them
from a directory like any checkpoint) it trains a few steps of the default four-task mix with
the chosen rollout engine and reports, per diagnostics scope:

* rollout tokens/s (response tokens of the step / ``time/rollout``; random weights rarely sample
  EOS, so completions run to ``--max-new`` tokens: the longest, slowest case),
* step time, and the backward + balance + optimizer time, with the diagnostics overhead as the
  ratio of that time to the same steps without group buffers (``off``),
* peak memory: the trainer process's peak CUDA allocation and the device's used memory at the
  end (which includes the colocated vLLM worker); on CPU, the process's peak RSS so far,
* whether it fits: scopes whose group buffers cannot fit the free memory are skipped with the
  size they would need (the trainer's own check), and an out-of-memory error is recorded.

Scopes: ``off``, ``proxy`` (last attention block), ``full`` (every parameter) for full
fine-tuning, and ``adapters`` (LoRA r=16 on every linear module, buffers over the adapters)
plus its ``off``. One trainer (and one engine) per model and mode; the scope is switched by
swapping the trainer's group buffers between steps, so the engine is built once. The last lines
name the largest model that fits per scope.

    python benchmarks/gpu_check.py                      # GPU: 0.5b,1.5b,7b, vLLM
    python benchmarks/gpu_check.py --models 0.5b --steps 2 --max-new 128
    python benchmarks/gpu_check.py --tiny               # CPU: the tiny architecture, same path
    python benchmarks/gpu_check.py --tiny --backend transformers   # without vLLM

``--json FILE`` also writes the rows. Run where a GPU is lent; ``--tiny`` runs anywhere (tests
call it), exercising everything but the CUDA-specific lines (bf16, CUDA memory, sleep mode).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

MODELS = {
    "0.5b": "Qwen/Qwen2.5-0.5B-Instruct",
    "1.5b": "Qwen/Qwen2.5-1.5B-Instruct",
    "3b": "Qwen/Qwen2.5-3B-Instruct",
    "7b": "Qwen/Qwen2.5-7B-Instruct",
}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="0.5b,1.5b,7b", help=f"comma-separated, of {list(MODELS)}")
    p.add_argument("--tiny", action="store_true", help="the tiny architecture on CPU instead")
    p.add_argument("--backend", choices=["vllm", "transformers"], help="default: vllm if installed")
    p.add_argument("--steps", type=int, default=3, help="measured steps per scope (+1 warm-up)")
    p.add_argument("--max-new", type=int, default=256, help="completion tokens (tiny: 12)")
    p.add_argument("--prompts", type=int, default=8, help="prompts per task per step")
    p.add_argument("--group", type=int, default=8, help="completions per prompt")
    p.add_argument("--micro-batch", type=int, default=8, help="sequences per forward/backward")
    p.add_argument("--no-lora", action="store_true", help="skip the LoRA (adapters) mode")
    p.add_argument("--workdir", help="where the random-weight models are written (default tmp)")
    p.add_argument("--json", help="also write the result rows here")
    return p.parse_args(argv)


def save_random_model(name: str, root: Path, tiny: bool, device: str) -> Path:
    """A model directory: the architecture with random weights and the character tokenizer."""
    import torch

    from taskgrad.architectures import build
    from taskgrad.config import TinyModelConfig
    from taskgrad.policy import build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer()
    path = root / name.replace("/", "--")
    if tiny:
        model = build_tiny_model(tokenizer, TinyModelConfig(), seed=0)
    else:
        torch.manual_seed(0)
        model = build(MODELS[name], device=device, dtype=torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    return path


def overrides(path: Path, args: argparse.Namespace, backend: str, lora: bool) -> list[str]:
    gpu = not args.tiny
    vllm = "{gpu_memory_utilization: 0.35, enable_sleep_mode: true}" if gpu else "{}"
    return [
        f"model={path}", f"model.dtype={'bfloat16' if gpu else 'float32'}",
        f"model.gradient_checkpointing={str(gpu).lower()}", f"rollout.backend={backend}",
        f"rollout.vllm={vllm}", f"rollout.prompts_per_task={args.prompts}",
        f"rollout.group_size={args.group}", f"rollout.max_new_tokens={args.max_new}",
        f"grpo.micro_batch_size={args.micro_batch}", "diagnostics.enabled=false", "eval.every=0",
        "diagnostics.probe_every=0", "progress=false", "steps=100000", "optim.lr=1e-6",
        f"device={'cuda' if gpu else 'cpu'}",
        *(["model.lora.r=16", "model.lora.alpha=32"] if lora else []),
    ]  # fmt: skip


def peak_memory(device: str) -> dict[str, float]:
    import torch

    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        return {"peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30,
                "device_used_gib": (total - free) / 2**30}  # fmt: skip
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def attach(trainer, scope: str) -> str | None:
    """Group buffers (and task momenta) of ``scope`` on the trainer; None, or why they cannot
    fit (the trainer's own size check)."""
    from taskgrad.diagnostics.gradient import TaskMomentum
    from taskgrad.gradients import GroupGradients
    from taskgrad.trainer import buffer_bytes, device_free_bytes

    trainer.groups = trainer.momentum = None
    if scope == "off":
        return None
    k, model = len(trainer.tasks), trainer.policy
    buffers = "full" if scope == "adapters" else scope
    _, need = buffer_bytes(model, buffers, 3 * k)  # 2K group rows + K task momenta
    free = device_free_bytes(next(model.parameters()).device)
    if need > 0.9 * free:
        return f"buffers need {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
    trainer.cfg.diagnostics.scope = buffers
    trainer.groups = GroupGradients(model, buffers, 2 * k)
    trainer.momentum = TaskMomentum(trainer.groups, k, trainer.cfg.optim.betas[0])
    return None


def measure(trainer, scope: str, args, device: str, first_step: int) -> dict:
    """Warm-up + ``args.steps`` steps with ``scope``'s buffers; the row of the table."""
    import torch

    from taskgrad.train import train_step

    row: dict = {"scope": scope}
    why = attach(trainer, scope)
    if why:
        return {**row, "fits": False, "why": why}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, cores, tokens, rollouts = [], [], [], []
    try:
        for i in range(args.steps + 1):
            t0 = time.perf_counter()
            m = train_step(trainer, first_step + i)
            if i == 0:
                continue  # warm-up
            times.append(time.perf_counter() - t0)
            cores.append(sum(m.get(f"time/{p}", 0.0) for p in ("backward", "balance", "optimizer")))
            names = trainer.task_names
            n = sum(m[f"task/{t}/prompts"] * args.group * m[f"task/{t}/response_length"]
                    for t in names if m[f"task/{t}/prompts"] == m[f"task/{t}/prompts"])  # fmt: skip
            tokens.append(n)
            rollouts.append(m["time/rollout"])
    except torch.cuda.OutOfMemoryError as e:
        return {**row, "fits": False, "why": f"out of memory: {str(e).splitlines()[0][:80]}"}
    finally:
        trainer.groups = trainer.momentum = None
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    rates = [t / r for t, r in zip(tokens, rollouts, strict=True)]
    return {
        **row, "fits": True, "step_s": statistics.median(times),
        "bwd_opt_s": statistics.median(cores), "rollout_tokens_per_s": statistics.median(rates),
        **peak_memory(device),
    }  # fmt: skip


def measure_model(name: str, path: Path, args, backend: str, device: str) -> list[dict]:
    """Every scope of one model, full fine-tuning then LoRA; one trainer (engine) per mode."""
    import torch

    from taskgrad.config import load_config
    from taskgrad.trainer import setup

    rows: list[dict] = []
    modes = [(False, ["off", "proxy", "full"])] + (
        [] if args.no_lora else [(True, ["off", "adapters"])]
    )
    for lora, scopes in modes:
        with tempfile.TemporaryDirectory() as runs:
            cfg = load_config(None, [*overrides(path, args, backend, lora), f"runs_root={runs}"])
            start = time.perf_counter()
            try:
                trainer = setup(cfg, None, resume=False)
            except torch.cuda.OutOfMemoryError as e:
                rows.append({"model": name, "mode": "lora" if lora else "full", "scope": "-",
                             "fits": False, "why": f"setup out of memory: {e}"[:100]})  # fmt: skip
                continue
            setup_s = time.perf_counter() - start
            try:
                for j, scope in enumerate(scopes):
                    row = measure(trainer, scope, args, device, 1 + j * (args.steps + 1))
                    rows.append({"model": name, "mode": "lora" if lora else "full",
                                 "setup_s": setup_s, **row})  # fmt: skip
            finally:
                trainer.engine.close()
                del trainer
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()
    return rows


def report(rows: list[dict]) -> None:
    """The table, the overhead ratios against ``off`` of the same mode, and what fits."""
    base = {(r["model"], r["mode"]): r for r in rows if r.get("scope") == "off" and r["fits"]}
    head = f"{'model':<7} {'mode':<5} {'scope':<9} {'tokens/s':>9} {'step s':>8} {'bwd+opt s':>9}"
    print(head + f" {'overhead':>8} {'memory':>22}")
    for r in rows:
        label = f"{r['model']:<7} {r['mode']:<5} {r['scope']:<9}"
        if not r["fits"]:
            print(f"{label} does not fit: {r['why']}")
            continue
        off = base.get((r["model"], r["mode"]))
        ratio = r["bwd_opt_s"] / off["bwd_opt_s"] if off and off["bwd_opt_s"] > 0 else float("nan")
        mem = ", ".join(f"{k} {v:.1f}" for k, v in r.items() if k.endswith("_gib"))
        print(f"{label} {r['rollout_tokens_per_s']:>9.0f} {r['step_s']:>8.2f} "
              f"{r['bwd_opt_s']:>9.2f} {ratio:>8.3f} {mem:>22}")  # fmt: skip
    for scope in ("proxy", "full", "adapters"):
        fit = [r["model"] for r in rows if r.get("scope") == scope and r["fits"]]
        print(f"largest model that fits, scope {scope}: {fit[-1] if fit else 'none measured'}")


def main(argv: list[str]) -> list[dict]:
    import torch

    from taskgrad.engines.vllm import vllm_available

    args = parse(argv)
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; use --tiny for the CPU path")
    if args.tiny and args.max_new == 256:
        args.max_new = 12
    backend = args.backend or ("vllm" if vllm_available() else "transformers")
    names = ["tiny"] if args.tiny else [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n != "tiny" and n not in MODELS]
    if unknown:
        raise SystemExit(f"gpu_check: unknown model {unknown[0]!r}; valid: {', '.join(MODELS)}")
    print(f"gpu_check: {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}), "
          f"backend {backend}, {args.steps} steps per scope, {args.prompts} prompts x 4 tasks x "
          f"G={args.group}, {args.max_new} new tokens, torch {torch.__version__}")  # fmt: skip
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as root:
        for name in names:
            path = save_random_model(name, Path(root), args.tiny, device)
            rows += measure_model(name, path, args, backend, device)
            report(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":  # vLLM's CPU worker is spawned and re-imports __main__
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    main(sys.argv[1:])
