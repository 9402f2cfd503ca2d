"""Code-sandbox overhead per completion: this tree's sandbox against the pre-rebuild one, one run.

    python benchmarks/sandbox_overhead.py [n=60] [batch=32] [baseline=REV]

Two measurements per sandbox, on a trivial program (``def f(x): return x * 3 + 1``, one call):

* ``sequential``: one ``run_python`` at a time; the median wall time per completion is what a
  completion costs on an idle machine (process start, isolation, the call, the read-back);
* ``batch``: ``run_many`` on ``batch`` distinct programs with 4 workers, as ``Code.rewards`` runs
  them; wall time / batch is the cost per completion of a training batch. Median over rounds.

The baseline is the sandbox at git revision ``REV`` (default: the last commit before the
rebuild), loaded from ``git show`` into a temporary directory; it is skipped, with the reason
printed, where git or that revision is unavailable. Old and new alternate round by round so
that both see the same machine load.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from types import ModuleType

BASELINE_REV = "58987e519e2e08fc43b30e10c8c5518f0a3d16a0"  # before the kernel-isolation rebuild
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = "def f(x):\n    return x * 3 + 1\n"


def load_baseline(rev: str, into: str) -> ModuleType:
    """The sandbox module as it was at ``rev`` (it imports nothing from taskgrad)."""
    for name in ("sandbox.py", "sandbox_runner.py"):
        source = subprocess.run(
            ["git", "-C", ROOT, "-c", "safe.directory=*", "show", f"{rev}:taskgrad/tasks/{name}"],
            capture_output=True,
            check=True,
        ).stdout
        with open(os.path.join(into, name), "wb") as fh:
            fh.write(source)
    path = os.path.join(into, "sandbox.py")
    spec = importlib.util.spec_from_file_location("baseline_sandbox", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def sequential(sandbox: ModuleType, n: int) -> list[float]:
    times = []
    for i in range(n):
        program = PROGRAM + f"# {i}\n"
        start = time.perf_counter()
        result = sandbox.run_python(program, inputs=[[2]])
        times.append(time.perf_counter() - start)
        assert result.ok, result
    return times


def batch(sandbox: ModuleType, size: int, round_: int) -> float:
    jobs = [sandbox.SandboxJob(PROGRAM + f"# {round_} {i}\n", inputs=((2,),)) for i in range(size)]
    start = time.perf_counter()
    results = sandbox.run_many(jobs, workers=4)
    elapsed = time.perf_counter() - start
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    return elapsed / size


def main(argv: list[str]) -> None:
    options = {"n": "60", "batch": "32", "baseline": BASELINE_REV}
    for arg in argv:
        key, _, value = arg.partition("=")
        if key not in options or not value:
            raise SystemExit(f"unknown argument {arg!r}; expected n=, batch= or baseline=")
        options[key] = value
    n, size = int(options["n"]), int(options["batch"])
    sys.path.insert(0, ROOT)
    from taskgrad.tasks import sandbox as current

    sandboxes: dict[str, ModuleType] = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            sandboxes["before"] = load_baseline(options["baseline"], tmp)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"baseline: unavailable ({type(exc).__name__}: git show {options['baseline']})")
        sandboxes["after"] = current
        seq: dict[str, list[float]] = {name: [] for name in sandboxes}
        per_batch: dict[str, list[float]] = {name: [] for name in sandboxes}
        for sandbox in sandboxes.values():
            sequential(sandbox, 3)  # warm-up: self-test, page cache
        rounds = max(1, n // 10)
        for r in range(rounds):
            for name, sandbox in sandboxes.items():
                seq[name] += sequential(sandbox, 10)
                per_batch[name].append(batch(sandbox, size, r))
    uid = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    print(f"sandbox overhead per completion ({uid}, {os.cpu_count()} CPUs), median:")
    for name in sandboxes:
        print(
            f"  {name:6s}  sequential {1000 * statistics.median(seq[name]):6.1f} ms "
            f"(n={len(seq[name])})   batch of {size}, 4 workers "
            f"{1000 * statistics.median(per_batch[name]):6.1f} ms (rounds={rounds})"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
