"""``taskgrad reproduce``: the paper's experiments on the embedded tiny model, then one report.

Runs, each an independent ``taskgrad.train.train`` call (one after another in this process, or
``jobs`` at a time in worker processes, see ``run_all``):

    default  (heterogeneous 4-task mix)       x ``seeds``
    math3    (math of three difficulties)      x ``seeds``
    default under the other loss aggregations  x ``length_seeds`` each   (the length experiment)
    default with balance.strategy=grad_proportional x ``ablation_seeds``  (if the config has it)

under ``<out>/runs/<name>``; extra ``key=value`` overrides go to every run. A run whose directory
holds summary.json is reused (after checking its config is the planned one); an interrupted run
with a checkpoint is resumed, one without is started again. The report (claims table first) is
written to ``<out>``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from taskgrad.analysis.gains import N_BOOT

AGGREGATIONS = ("token_mean", "seq_mean", "constant")
RESERVED = ("preset", "seed", "run_name", "runs_root")  # set per run by reproduce itself


class RunsFailed(Exception):
    """Some runs of a plan failed (the others finished); the message names each and its log."""


@dataclass
class Planned:
    name: str
    preset: str
    overrides: list[str]


def ablation_available() -> bool:
    """Whether the config tree knows ``balance.strategy=grad_proportional`` yet."""
    from taskgrad.config import ConfigError, load_config

    try:
        load_config(None, ["balance.strategy=grad_proportional"])
    except ConfigError:
        return False
    return True


def plan(
    seeds: int = 3,
    length_seeds: int = 1,
    ablation_seeds: int = 1,
    overrides: list[str] | None = None,
) -> list[Planned]:
    """The runs of one reproduction, in the order they are trained."""
    from taskgrad.config import load_config

    overrides = list(overrides or [])
    for item in overrides:
        if item.split("=", 1)[0].strip() in RESERVED:
            raise ValueError(
                f"reproduce: {item!r} is set per run; {', '.join(RESERVED)} are reserved"
            )
    main_agg = load_config("default", overrides).grpo.loss_agg
    runs = [Planned(f"{mix}-s{s}", mix, []) for mix in ("default", "math3") for s in range(seeds)]
    for agg in (a for a in AGGREGATIONS if a != main_agg):
        runs += [
            Planned(f"default-{agg}-s{s}", "default", [f"grpo.loss_agg={agg}"])
            for s in range(length_seeds)
        ]
    if ablation_seeds > 0 and ablation_available():
        runs += [
            Planned(
                f"default-grad_proportional-s{s}", "default", ["balance.strategy=grad_proportional"]
            )
            for s in range(ablation_seeds)
        ]
    for run in runs:
        seed = run.name.rsplit("-s", 1)[1]
        run.overrides = [*overrides, *run.overrides, f"seed={seed}", f"run_name={run.name}"]
    return runs


def run_planned(planned: Planned, runs_root: Path) -> Path:
    """Train one planned run, or reuse / resume it (see the module docstring)."""
    from taskgrad.analysis.runs import config_key
    from taskgrad.config import load_config, to_dict
    from taskgrad.rundir import RunDir
    from taskgrad.train import train

    cfg = load_config(planned.preset, [*planned.overrides, f"runs_root={runs_root}"])
    path = runs_root / planned.name
    if path.exists() and (path / "config.yaml").exists():
        held = RunDir.load_config(path)
        if config_key(to_dict(held)) != config_key(to_dict(cfg)):
            raise ValueError(f"{path} holds a run of another configuration; use a new --out")
        if (path / "summary.json").exists():
            return path
        if RunDir(path).checkpoints():
            return train(held, path, resume=True)
    if path.exists():
        shutil.rmtree(path)  # started, never checkpointed: nothing worth keeping
    return train(cfg, path)


def run_all(runs: list[Planned], runs_root: Path, jobs: int = 1) -> list[Path]:
    """Train (or reuse / resume) each planned run; their paths, in plan order.

    ``jobs=1`` trains them one after another in this process. ``jobs>1`` trains up to ``jobs`` at
    a time, each in a fresh process (spawned, so no state leaks between runs) with
    ``cpu_count // jobs`` torch threads and its output in ``<runs_root>/<name>.log``; a failed
    run does not stop the others, and the error names every failed run and its log.
    """
    if jobs < 1:
        raise ValueError(f"jobs: must be at least 1, got {jobs}")
    if jobs == 1:
        paths = []
        for i, planned in enumerate(runs, start=1):
            print(f"[{i}/{len(runs)}] {planned.name}", flush=True)
            paths.append(run_planned(planned, runs_root))
        return paths
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    runs_root.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    results: dict[str, Path] = {}
    failed: list[str] = []
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_run_logged, p, runs_root, threads): p for p in runs}
        for done, future in enumerate(as_completed(futures), start=1):
            planned = futures[future]
            try:
                results[planned.name] = future.result()
                print(f"[{done}/{len(runs)}] {planned.name}: done", flush=True)
            except Exception as e:  # reported below with the run's log
                log = runs_root / f"{planned.name}.log"
                failed.append(f"{planned.name} ({type(e).__name__}: {e}; log {log})")
                print(f"[{done}/{len(runs)}] {planned.name}: FAILED, see {log}", flush=True)
    if failed:
        raise RunsFailed(f"{len(failed)} run(s) failed: " + "; ".join(failed))
    return [results[p.name] for p in runs]


def _run_logged(planned: Planned, runs_root: Path, threads: int) -> Path:
    """One planned run in a worker process: ``threads`` torch threads, output to its log."""
    import contextlib

    import torch

    torch.set_num_threads(threads)
    planned = Planned(planned.name, planned.preset, [*planned.overrides, "progress=false"])
    log = open(runs_root / f"{planned.name}.log", "a")  # noqa: SIM115 - closed below
    with log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        return run_planned(planned, runs_root)


def reproduce(
    out: str | Path = "runs/reproduce",
    seeds: int = 3,
    length_seeds: int = 1,
    ablation_seeds: int = 1,
    overrides: list[str] | None = None,
    n_boot: int = N_BOOT,
    jobs: int = 1,
) -> Path:
    """Train (or reuse) every planned run, then write the report into ``out``; returns ``out``."""
    from taskgrad.analysis.report import build_report

    out = Path(out)
    runs = plan(seeds, length_seeds, ablation_seeds, overrides)
    paths = run_all(runs, out / "runs", jobs)
    title = f"taskgrad reproduce: the paper's findings on {len(paths)} runs"
    return build_report(paths, out, title=title, claims=True, n_boot=n_boot)
