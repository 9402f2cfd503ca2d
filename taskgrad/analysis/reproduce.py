"""``taskgrad reproduce``: the paper's experiments on the embedded tiny model, then one report.

Runs, each an independent ``taskgrad.train.train`` call in a fresh process (``jobs`` at a time,
see ``run_all``):

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

from taskgrad.analysis.windows import N_BOOT

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
    length_seeds: int = 3,
    ablation_seeds: int = 3,
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


def finished(planned: Planned, runs_root: Path) -> Path | None:
    """The planned run's directory if it already finished; None if it must (re)train.

    Raises if the directory holds a run of another configuration (nothing is overwritten).
    """
    from taskgrad.analysis.runs import config_key
    from taskgrad.config import load_config, to_dict
    from taskgrad.rundir import RunDir

    cfg = load_config(planned.preset, [*planned.overrides, f"runs_root={runs_root}"])
    path = runs_root / planned.name
    if (path / "config.yaml").exists():
        held = RunDir.load_config(path)
        if config_key(to_dict(held)) != config_key(to_dict(cfg)):
            raise ValueError(f"{path} holds a run of another configuration; use a new --out")
        if (path / "summary.json").exists():
            return path
    return None


def run_planned(planned: Planned, runs_root: Path) -> Path:
    """Train one planned run, or reuse / resume it (see the module docstring)."""
    from taskgrad.config import load_config
    from taskgrad.rundir import RunDir
    from taskgrad.train import train

    done = finished(planned, runs_root)
    if done is not None:
        return done
    path = runs_root / planned.name
    if (path / "config.yaml").exists() and RunDir(path).checkpoints():
        return train(RunDir.load_config(path), path, resume=True)
    if path.exists():
        shutil.rmtree(path)  # started, never checkpointed: nothing worth keeping
    cfg = load_config(planned.preset, [*planned.overrides, f"runs_root={runs_root}"])
    return train(cfg, path)


def run_all(runs: list[Planned], runs_root: Path, jobs: int = 1) -> list[Path]:
    """Train (or reuse / resume) each planned run; their paths, in plan order.

    Finished runs are reused. Every other run trains in a fresh process (spawned, so nothing
    leaks from one run into the next), up to ``jobs`` at a time, each with ``OMP_NUM_THREADS``
    torch threads if set, else ``cpu_count // jobs``. With one job the run's output (progress
    bar) is this terminal's; with several, each run writes ``<runs_root>/<name>.log``. A failed
    run does not stop the others; the error names every failed run (and its log).
    """
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    if jobs < 1:
        raise ValueError(f"jobs: must be at least 1, got {jobs}")
    results = {p.name: finished(p, runs_root) for p in runs}
    todo = [p for p in runs if results[p.name] is None]
    if len(todo) < len(runs):
        print(f"reusing {len(runs) - len(todo)} finished run(s) in {runs_root}", flush=True)
    if not todo:
        return [results[p.name] for p in runs]
    runs_root.mkdir(parents=True, exist_ok=True)
    env = os.environ.get("OMP_NUM_THREADS", "")
    threads = int(env) if env.isdigit() and int(env) > 0 else max(1, (os.cpu_count() or 1) // jobs)
    log = jobs > 1
    failed: list[str] = []
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {
            pool.submit(_run_worker, p, runs_root, threads, log, f"[{i}/{len(todo)}] {p.name}"): p
            for i, p in enumerate(todo, start=1)
        }
        for done, future in enumerate(as_completed(futures), start=1):
            planned = futures[future]
            where = f", log {runs_root / f'{planned.name}.log'}" if log else ""
            try:
                results[planned.name] = future.result()
                print(f"[{done}/{len(todo)}] {planned.name}: done", flush=True)
            except Exception as e:  # reported below, with the run's log
                failed.append(f"{planned.name} ({type(e).__name__}: {e}{where})")
                print(f"[{done}/{len(todo)}] {planned.name}: FAILED{where}", flush=True)
    if failed:
        raise RunsFailed(f"{len(failed)} run(s) failed: " + "; ".join(failed))
    return [results[p.name] for p in runs]


def _run_worker(planned: Planned, runs_root: Path, threads: int, log: bool, label: str) -> Path:
    """One planned run in its worker process: ``threads`` torch threads; output to its log."""
    import contextlib
    import traceback

    import torch

    torch.set_num_threads(threads)
    if not log:
        print(label, flush=True)
        return run_planned(planned, runs_root)
    planned = Planned(planned.name, planned.preset, [*planned.overrides, "progress=false"])
    out = open(runs_root / f"{planned.name}.log", "a")  # noqa: SIM115 - closed below
    with out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        print(label, flush=True)
        try:
            return run_planned(planned, runs_root)
        except BaseException:
            traceback.print_exc()  # into the log; the parent names the run and the error
            raise


def reproduce(
    out: str | Path = "runs/reproduce",
    seeds: int = 3,
    length_seeds: int = 3,
    ablation_seeds: int = 3,
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
