"""Command line: ``taskgrad train``, ``taskgrad report`` and ``taskgrad reproduce``.

    taskgrad train [preset=NAME] [key=value ...] [--resume RUN_DIR] [--nproc N]
    taskgrad report RUN_DIR [RUN_DIR ...] [--out DIR]
    taskgrad reproduce [--seeds N] [--out DIR] [key=value ...]

Every error a user can cause ends with one line ``error: ...`` on stderr naming what is wrong,
and exit status 2: an unknown key, task or preset, an invalid or nonsense value, malformed YAML
(preset file, override or a run's config.yaml), a malformed dataset file or one too small to
hold out a prompt, device=cuda without a GPU, a runs path under a file, a run directory that is
not empty or is in use by another process, a disk that is full or read-only (the path named), a
run stopped by non-finite numbers (taskgrad/numerics.py). A run whose setup fails leaves no run
directory behind. Ctrl-C ends with one line too (for training: the step and the resume command)
and exit status 130. ``TASKGRAD_TRACEBACK=1`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _train(args: argparse.Namespace, argv: list[str]) -> int:
    if args.nproc < 1:
        raise ValueError(f"--nproc: must be at least 1, got {args.nproc}")
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _launch(args.nproc, argv)
    from taskgrad.config import load_config
    from taskgrad.distributed import shutdown
    from taskgrad.rundir import RunDir
    from taskgrad.train import train

    started = time.perf_counter()
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").exists():
            raise ValueError(f"--resume: {run_dir} holds no config.yaml (not a run directory)")
        if args.overrides or args.config or args.run_dir:
            raise ValueError(
                "--resume continues a run as configured; overrides, --config and --run-dir are "
                "not allowed with it"
            )
        cfg = RunDir.load_config(run_dir)
        path = train(cfg, run_dir, resume=True)
    else:
        cfg = load_config(args.config, args.overrides)
        path = train(cfg, Path(args.run_dir) if args.run_dir else None)
    shutdown()  # data parallelism: every rank has finished; the process group goes
    if int(os.environ.get("RANK", "0")) != 0:  # a data-parallel launch: rank 0 reports
        return 0
    # setup (model build included) to the end of training; benchmarks/default_run.py reads it
    print(f"trained {cfg.steps} steps in {time.perf_counter() - started:.1f} s")
    print_summary(path)
    if args.report:
        _check_report_extra()
        from taskgrad.analysis.report import build_report

        started = time.perf_counter()
        out = build_report([path], None)
        print(f"report: {out / 'report.html'} in {time.perf_counter() - started:.1f} s")
    return 0


def _launch(nproc: int, argv: list[str]) -> int:
    """``taskgrad train --nproc N ...``: the same command in N processes on this machine, through
    ``torch.distributed.run`` (several machines: torchrun or accelerate launch, docs/scale.md).

    The launcher runs in its own process group, so that Ctrl-C reaches this process alone, which
    passes exactly one SIGINT on to it (a later Ctrl-C, SIGTERM or SIGHUP passes SIGTERM): the
    launcher then stops its workers and waits for them (taskgrad/torchrun.py), and this process
    waits for the launcher. Nothing is killed outright here, so no worker is left running and the
    one line of the interrupt is rank 0's (the step and the resume command).
    """
    import signal
    import subprocess

    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    cmd = [sys.executable, "-m", "taskgrad.torchrun", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "taskgrad.cli", *rest]  # fmt: skip
    launched: list[subprocess.Popen] = []
    signals: list[int] = []

    def forward(signum: int, frame: object) -> None:
        signals.append(signum)
        if launched and launched[0].poll() is None:
            first_interrupt = signals == [signal.SIGINT]
            launched[0].send_signal(signal.SIGINT if first_interrupt else signal.SIGTERM)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, forward) for s in handled}
    try:
        launched.append(subprocess.Popen(cmd, process_group=0))
        if signals:  # interrupted while it started
            launched[0].send_signal(signal.SIGINT)
        code = launched[0].wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 + signals[0] if signals and code != 0 else code


def _compare(args: argparse.Namespace) -> int:
    for flag, value in (
        ("seeds", args.seeds),
        ("tune-seeds", args.tune_seeds),
        ("jobs", args.jobs),
    ):
        if value < 1:
            raise ValueError(f"--{flag}: must be at least 1, got {value}")
    from taskgrad.balancing import STRATEGIES

    listed = [s.strip() for s in args.strategies.split(",") if s.strip()]
    strategies = list(dict.fromkeys(listed))  # a strategy listed twice is trained and counted once
    if len(strategies) < len(listed):
        twice = sorted({s for s in listed if listed.count(s) > 1})
        note(f"--strategies: {', '.join(twice)} listed more than once; each counts once")
    for name in [*strategies, args.baseline]:
        STRATEGIES.get(name)  # unknown names fail here, listing the valid ones
    if args.baseline not in strategies:
        strategies.insert(0, args.baseline)
    _check_report_extra()
    from taskgrad.analysis.compare import compare

    weights = None
    if args.static_weights:
        try:
            weights = [float(w) for w in args.static_weights.split(",")]
        except ValueError:
            raise ValueError(
                f"--static-weights: need comma-separated numbers, got {args.static_weights!r}"
            ) from None
    out = compare(
        strategies, args.seeds, args.preset, args.out, args.overrides, args.baseline, args.target,
        jobs=args.jobs, static_weights=weights, tune_seeds=args.tune_seeds,
        diagnostics=args.diagnostics, gap=args.gap,
    )  # fmt: skip
    print((out / "compare.md").read_text())
    print(f"report: {out / 'report.html'}")
    return 0


def _check_report_extra() -> None:
    """A one-line error naming the extra to install when the report dependencies are missing."""
    try:
        import matplotlib  # noqa: F401
        import pandas  # noqa: F401
        import scipy  # noqa: F401
        import statsmodels  # noqa: F401
    except ModuleNotFoundError as e:
        raise ValueError(
            f"reports need the 'report' extra ({e.name} is missing): pip install 'taskgrad[report]'"
        ) from None


def unique_runs(paths: list[str]) -> list[str]:
    """Each run once: a run directory listed twice (by any path to it) would count as two seeds."""
    seen: dict[Path, str] = {}
    for p in paths:
        key = Path(p).resolve()
        if key in seen:
            note(f"{p} is listed more than once (as {seen[key]}); it counts once")
            continue
        seen[key] = p
    return list(seen.values())


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def _report(args: argparse.Namespace) -> int:
    _check_report_extra()
    from taskgrad.analysis.report import build_report

    out = build_report(unique_runs(args.run_dirs), args.out, title=args.title)
    print(f"report: {out / 'report.html'}")
    print(f"        {out / 'report.md'}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    for name in ("length_seeds", "ablation_seeds"):  # default: as many as --seeds (paired)
        if getattr(args, name) is None:
            setattr(args, name, args.seeds)
    for name, least in (("seeds", 1), ("length_seeds", 0), ("ablation_seeds", 0)):
        if getattr(args, name) < least:
            flag = name.replace("_", "-")
            raise ValueError(f"--{flag}: must be at least {least}, got {getattr(args, name)}")
    _check_report_extra()
    from taskgrad.analysis.reproduce import reproduce

    out = reproduce(
        args.out, args.seeds, args.length_seeds, args.ablation_seeds, args.overrides, jobs=args.jobs
    )
    print(f"report: {out / 'report.html'}")
    return 0


def print_summary(path: Path) -> None:
    import json

    summary = json.loads((path / "summary.json").read_text())
    print(f"run directory: {path}")
    start, end = summary.get("eval_start", {}), summary.get("eval_end", {})
    if end:
        print(f"{'task':<14} {'held-out acc start':>18} {'end':>6}")
        for task in summary["tasks"]:
            s, e = start.get(task), end.get(task)
            fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            print(f"{task:<14} {fmt(s):>18} {fmt(e):>6}")


def main(argv: list[str] | None = None) -> int:
    from taskgrad.config import preset_names

    parser = argparse.ArgumentParser(prog="taskgrad", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="run multi-task GRPO (default: the 3-task CPU job)")
    p_train.add_argument(
        "overrides", nargs="*",
        help=f"key=value overrides, e.g. optim.lr=1e-4 tasks=arithmetic,code; preset=NAME "
        f"(one of {', '.join(preset_names())}) or a YAML file",
    )  # fmt: skip
    p_train.add_argument("--config", help="a preset name or a YAML config file to start from")
    p_train.add_argument("--run-dir", help="where to write the run (default runs/<time>-...)")
    p_train.add_argument(
        "--resume", metavar="RUN_DIR",
        help="continue a run from its last complete checkpoint (a run with none starts over from "
        "step 0, with its config; its partial metrics are kept as metrics.partial-N.jsonl)",
    )  # fmt: skip
    p_train.add_argument(
        "--report", action="store_true", help="write report.html/report.md into the run directory"
    )
    p_train.add_argument(
        "--nproc", type=int, default=1,
        help="data-parallel processes on this machine (parallel.mode=ddp|fsdp2; docs/scale.md)",
    )  # fmt: skip
    add_report_parsers(sub)
    add_compare_parser(sub)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    commands = {"report": _report, "reproduce": _reproduce, "compare": _compare}
    try:
        if args.command == "train":
            return _train(args, argv)
        return commands[args.command](args)
    except BaseException as e:
        code, message = user_error(e, args.command)
        if code is None or os.environ.get("TASKGRAD_TRACEBACK"):
            raise
        shared = code == 130 or agreed(e)  # every rank has it: rank 0 says it, in one line
        if int(os.environ.get("RANK", "0")) == 0 or not shared:
            print(f"error: {message}".splitlines()[0], file=sys.stderr, flush=True)
        if agreed(e):
            from taskgrad.distributed import shutdown

            shutdown()
        elif "torch.distributed" in sys.modules:  # perhaps a data-parallel worker
            from taskgrad.distributed import leave

            leave(code)
        return code


def agreed(e: BaseException) -> bool:
    """An error every rank raises (distributed.Parallel.agree); rank 0 speaks for them."""
    from taskgrad.distributed import RankFailed

    return isinstance(e, RankFailed)


def user_error(e: BaseException, command: str) -> tuple[int | None, str]:
    """(exit status, one-line message) of an error a user can cause; (None, "") for a bug."""
    from taskgrad.analysis.reproduce import RunsFailed
    from taskgrad.distributed import RankFailed
    from taskgrad.numerics import NonFiniteError
    from taskgrad.rundir import Interrupted, RunLocked, describe_os_error

    if isinstance(e, RankFailed):  # one rank's error, raised on every rank
        code, message = user_error(e.error, command)
        return code, f"{'' if e.rank == 0 else f'rank {e.rank}: '}{message}"
    if isinstance(e, Interrupted):
        return 130, str(e)
    if isinstance(e, KeyboardInterrupt):
        if command == "train":
            return 130, "interrupted before training started (no run directory was written)"
        return 130, "interrupted; run the same command again to continue"
    if isinstance(e, OSError):
        return 2, describe_os_error(e)
    if isinstance(e, KeyError):
        return 2, str(e.args[0]) if e.args else "KeyError"
    if isinstance(e, ValueError | RunsFailed | RunLocked | NonFiniteError | ImportError):
        return 2, str(e) or type(e).__name__
    return None, ""


def add_report_parsers(sub) -> None:
    p_report = sub.add_parser(
        "report", help="the paper's findings from run directories (report.html + report.md)"
    )
    p_report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories")
    p_report.add_argument(
        "--out", help="output folder (default: the run directory for one run, else reports/<time>)"
    )
    p_report.add_argument("--title", help="report title")
    p_repro = sub.add_parser(
        "reproduce", help="run both paper mixtures, the length experiment and the ablation; report"
    )
    p_repro.add_argument(
        "overrides", nargs="*", help="key=value overrides for every run, e.g. steps=20"
    )
    p_repro.add_argument("--seeds", type=int, default=3, help="seeds per mixture (default 3)")
    p_repro.add_argument(
        "--length-seeds", type=int, default=None,
        help="seeds per other loss aggregation (seq_mean, constant; default: --seeds; 0 skips)",
    )  # fmt: skip
    p_repro.add_argument(
        "--ablation-seeds", type=int, default=None,
        help="seeds of gradient-proportional sampling, paired with the default mix's "
        "(default: --seeds; claim (g) needs 3; 0 skips)",
    )  # fmt: skip
    p_repro.add_argument(
        "--out", default="runs/reproduce",
        help="where runs (<out>/runs) and the report go; rerun to resume (default runs/reproduce)",
    )  # fmt: skip
    add_jobs_argument(p_repro)


def add_compare_parser(sub) -> None:
    p = sub.add_parser(
        "compare", help="balancing strategies x seeds at matched compute, with a comparison report"
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run, e.g. steps=60")
    p.add_argument(
        "--strategies", default="uniform,static,equal_task,equal_norm,mt_grpo,gain_aware",
        help="comma-separated registered strategies (the baseline is added if missing); static is "
        "tuned by a sweep first unless --static-weights is given; equal_task (the Gram methods' "
        "base mix) separates a method from its base mix",
    )  # fmt: skip
    p.add_argument("--baseline", default="uniform", help="the strategy differences are paired to")
    p.add_argument("--seeds", type=int, default=3, help="seeds per strategy (default 3)")
    p.add_argument("--preset", default="default", help="the mix: default or math3 (or a YAML)")
    p.add_argument("--target", type=float, default=0.5, help="worst-task accuracy to reach")
    p.add_argument("--out", default="runs/compare", help="runs and report; rerun to resume")
    p.add_argument(
        "--static-weights",
        help="weights of static, comma-separated (default: tuned by a sweep, see tune_static.md)",
    )
    p.add_argument(
        "--tune-seeds", type=int, default=3,
        help="tuning seeds per weighting of the static sweep (default 3: an interval over them)",
    )  # fmt: skip
    p.add_argument(
        "--gap", action="store_true",
        help="stage 0: also train each task alone (same per-task budget, same initial model) and "
        "report the interference gap (gap.md), with the aims as fractions of it",
    )  # fmt: skip
    p.add_argument(
        "--diagnostics", action="store_true",
        help="also write the full per-configuration report into <out>/diagnostics",
    )  # fmt: skip
    add_jobs_argument(p)


def add_jobs_argument(p) -> None:
    p.add_argument(
        "--jobs", type=int, default=1,
        help="runs trained at a time, each in a fresh process with OMP_NUM_THREADS (if set) or "
        "cpu_count/jobs torch threads; with several jobs each run logs to <runs>/<name>.log",
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
