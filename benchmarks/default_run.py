"""The README's first command, timed by phase: ``taskgrad train --report`` with an empty cache.

    python benchmarks/default_run.py [--budget 300] [--keep DIR] [key=value ...]

Runs the command exactly as a new user does (a fresh process, the default preset, progress bars
on), with ``TASKGRAD_CACHE`` and the run directory in a new temporary folder, so the embedded
tiny model is built and warm-started first. The phases are read from the command's own output:

* ``warm start``: building the tiny model (the ``tiny model: built in`` line);
* ``training``: setup and the training loop with its held-out evaluations (``trained ... in``
  counts from the command's start of setup, the warm start included: it is subtracted);
* ``report``: the report (``report: ... in``);
* ``other``: the rest of the wall time (interpreter start, imports, loading the model, setup).

It prints the machine (CPU cores, torch threads, the load average before and after: other work
on the machine slows every phase), each phase in seconds and as a share of the total, and
whether the total is within ``--budget`` seconds (the README's 5 minutes on 2 cores). One run;
the load average says whether it was a quiet one. Extra ``key=value`` arguments are passed to
the command (e.g. to time a variant); the measured claim is about the command without them.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

PHASES = {
    "warm start": re.compile(r"tiny model: built in ([0-9.]+) s"),
    "training": re.compile(r"trained \d+ steps in ([0-9.]+) s"),
    "report": re.compile(r"report: .* in ([0-9.]+) s"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=300.0, help="seconds (default 300)")
    parser.add_argument("--keep", help="keep the cache and run directory here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import torch

    root = args.keep or tempfile.mkdtemp(prefix="taskgrad-default-run-")
    os.makedirs(root, exist_ok=True)
    env = {**os.environ, "TASKGRAD_CACHE": os.path.join(root, "cache")}
    cmd = [sys.executable, "-m", "taskgrad.cli", "train", *args.overrides,
           f"runs_root={os.path.join(root, 'runs')}", "--report"]  # fmt: skip
    print(f"cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, "
          f"load average before: {os.getloadavg()[0]:.2f}")  # fmt: skip
    print("$ taskgrad train --report   (empty cache: " + env["TASKGRAD_CACHE"] + ")")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    seconds: dict[str, float] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write("  | " + line)
        for phase, pattern in PHASES.items():
            found = pattern.search(line)
            if found:
                seconds[phase] = float(found.group(1))
    code = proc.wait()
    total = time.perf_counter() - start
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    if code != 0:
        print(f"the command failed with exit code {code}")
        return code
    missing = [p for p in PHASES if p not in seconds]
    if missing:
        print(f"phase lines not found in the output: {', '.join(missing)}")
        return 1
    seconds["training"] -= seconds["warm start"]  # "trained ... in" includes building the model
    seconds["other"] = total - sum(seconds.values())
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    print(f"{'phase':<12} {'seconds':>8} {'share':>6}")
    for phase, s in seconds.items():
        print(f"{phase:<12} {s:8.1f} {s / total:6.0%}")
    verdict = "within" if total <= args.budget else "OVER"
    print(f"{'total':<12} {total:8.1f}   {verdict} the {args.budget:.0f} s budget "
          f"({total / args.budget:.2f} of it)")  # fmt: skip
    return 0 if total <= args.budget else 1


if __name__ == "__main__":
    sys.exit(main())
