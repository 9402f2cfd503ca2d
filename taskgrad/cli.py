"""Command line: ``taskgrad train [preset=NAME] [key=value ...] [--resume RUN_DIR]``.

Bad input (an unknown key, task or preset, an invalid value, a malformed dataset file) ends with a
one-line ``error: ...`` naming what is wrong, and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    from taskgrad.config import load_config
    from taskgrad.rundir import RunDir
    from taskgrad.train import train

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").exists():
            raise ValueError(f"--resume: {run_dir} holds no config.yaml")
        if args.overrides:
            raise ValueError("--resume continues a run as configured; overrides are not allowed")
        cfg = RunDir.load_config(run_dir)
        path = train(cfg, run_dir, resume=True)
    else:
        cfg = load_config(args.config, args.overrides)
        path = train(cfg, Path(args.run_dir) if args.run_dir else None)
    print_summary(path)
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
    p_train = sub.add_parser("train", help="run multi-task GRPO (default: the 4-task CPU job)")
    p_train.add_argument(
        "overrides", nargs="*",
        help=f"key=value overrides, e.g. optim.lr=1e-4 tasks=arithmetic,code; preset=NAME "
        f"(one of {', '.join(preset_names())}) or a YAML file",
    )  # fmt: skip
    p_train.add_argument("--config", help="a preset name or a YAML config file to start from")
    p_train.add_argument("--run-dir", help="where to write the run (default runs/<time>-...)")
    p_train.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {message}".splitlines()[0], file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
