"""Fault injection: kill -9 at randomised points of the run directory's writes, resume, and get
the uninterrupted run's metrics, step for step (``time/*`` aside), exactly.

The kill points are the writes themselves: every metrics append (killed part-way through the
line at a random byte: a torn line), every stage of a checkpoint (after the weights, the
tokenizer, the trainer state, the completion marker, the rename, the pruning of the old one)
and every whole-file replacement (config.yaml at creation, versions.json, checkpoint.json,
summary.json). A reference run lists them in order; a fixed seed picks which to try, so CI
tries the same points every time. Each trial is a fresh run killed (SIGKILL, by itself, at
that exact point); every other trial is killed a second time at a random point of its first
resume; then ``taskgrad train --resume`` (or, if the kill came before the run directory
existed, the same command again) runs it to the end, and its records must equal the
reference's. Every resume must also keep the bytes metrics.jsonl held, unchanged: as the start
of the file (a resume appends) or moved aside whole (a run with no checkpoint yet starts over);
and the lock must be released.

To keep this fast, one worker process (``python -m tests.test_faults``, one torch thread)
trains once to build the tiny model and import everything, then forks a child per run.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from tests.test_train import PARITY, SMALL

ROOT = Path(__file__).parents[1]
SEED = 2026  # which kill points CI tries
TRIALS = 20
CONFIG = [
    *SMALL,
    f"tasks=[{{name: left, type: '{PARITY}'}}, {{name: right, type: '{PARITY}'}}]",
    "steps=6",
    "eval.every=3",
    "checkpoint_every=2",
    "keep_checkpoints=1",  # so that old checkpoints are pruned (another kill point)
    "checkpoint_minutes=0",  # checkpoints by step only: the same kill points on any machine
]


# --- in the worker ----------------------------------------------------------------------------


def in_child(fn) -> int:
    """Run ``fn`` in a forked child; its exit status, or -N if signal N killed it."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def install_faults(kill_at: int | None, cut: float, events: list[str] | None = None) -> None:
    """Count the run directory's writes (into ``events``); SIGKILL this process at write number
    ``kill_at`` - for an append, after writing only ``cut`` of its bytes."""
    import taskgrad.rundir as R

    counter = itertools.count()
    real_append, real_atomic = R.append_bytes, R.write_atomic

    def event(name: str, partial=None) -> None:
        i = next(counter)
        if events is not None:
            events.append(name)
        if i == kill_at:
            if partial is not None:
                partial()
            os.kill(os.getpid(), signal.SIGKILL)

    def append_bytes(path, data):
        part = data[: int(len(data) * cut)]
        event(f"append:{Path(path).name}", lambda: real_append(path, part) if part else None)
        real_append(path, data)

    def write_atomic(path, text):
        event(f"replace:{Path(path).name}")
        real_atomic(path, text)

    R.append_bytes = append_bytes
    R.write_atomic = write_atomic
    R.checkpoint_stage = lambda stage: event(f"checkpoint:{stage}")


def cli(*argv: str) -> None:
    from taskgrad.cli import main

    code = main(list(argv))
    if code != 0:
        raise SystemExit(code)


def start(run: Path, cache: str) -> None:
    cli("train", *CONFIG, f"model.cache_dir={cache}", "--run-dir", str(run))


def start_or_resume(run: Path, cache: str) -> None:
    """What a user does after a crash: resume the run, or start it again if it never began."""
    if (run / "config.yaml").exists():
        cli("train", "--resume", str(run))
    else:
        start(run, cache)


def metrics_bytes(run: Path) -> bytes:
    """metrics.jsonl as it is (a resume must only append to it; b"" before it exists)."""
    path = run / "metrics.jsonl"
    return path.read_bytes() if path.exists() else b""


def kept(before: bytes, run: Path) -> bool:
    """Whether what metrics.jsonl held is still there, unchanged: the start of metrics.jsonl (a
    resume appends), or a metrics.partial-N.jsonl (a run without a checkpoint starts over)."""
    partials = [p.read_bytes() for p in run.glob("metrics.partial-*.jsonl")]
    return metrics_bytes(run).startswith(before) or before in partials


def comparable(run: Path) -> list[dict]:
    from taskgrad.rundir import read_records

    records = read_records(run / "metrics.jsonl", warn=lambda message: None)
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]


def worker(root: Path) -> dict:
    cache = str(root / "cache")
    # One plain run in this process first: it builds the tiny model and imports everything a run
    # imports, so that each forked child starts warm (a child run then takes ~0.6 s, not ~2 s).
    start(root / "warm-up", cache)
    events: list[str] = []
    reference = root / "reference"

    def run_reference() -> None:
        install_faults(None, 0.0, events)
        start(reference, cache)
        (root / "events.json").write_text(json.dumps(events))

    assert in_child(run_reference) == 0
    events = json.loads((root / "events.json").read_text())
    expected = comparable(reference)
    rng = random.Random(SEED)
    points = sorted(rng.sample(range(len(events)), min(TRIALS, len(events))))
    trials = []
    for n, point in enumerate(points):
        run = root / f"trial-{n}"
        cut = rng.uniform(0.05, 0.95)
        first = in_child(lambda run=run, point=point, cut=cut: (
            install_faults(point, cut), start(run, cache)))  # fmt: skip
        second, grew = None, True
        if n % 2 == 1:  # killed again, early in its first resume
            again, cut2 = rng.randrange(12), rng.uniform(0.05, 0.95)
            before = metrics_bytes(run)
            second = in_child(lambda run=run, again=again, cut2=cut2: (
                install_faults(again, cut2), start_or_resume(run, cache)))  # fmt: skip
            grew = kept(before, run)
        before = metrics_bytes(run)
        final = in_child(lambda run=run: start_or_resume(run, cache))
        grew = grew and kept(before, run)
        got = comparable(run) if final == 0 else []
        first_diff = next(
            (a["step"] for a, b in zip(expected, got, strict=False) if a != b),
            None if len(got) == len(expected) else min(len(got), len(expected)),
        )
        trials.append({
            "event": events[point], "index": point, "cut": round(cut, 3), "first": first,
            "second": second, "final": final, "identical": final == 0 and got == expected,
            "first_difference_at_step": first_diff, "append_only": grew,
            "lock_left": (run / "lock").exists(),
        })  # fmt: skip
    return {"events": len(events), "trials": trials, "steps": [r["step"] for r in expected]}


# --- the test ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_at_random_writes_then_resume_repeats_the_uninterrupted_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tests.test_faults", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1500)
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    trials = result["trials"]
    killed = [t for t in trials if t["first"] == -signal.SIGKILL]
    identical = [t for t in trials if t["identical"]]
    print(
        f"\nfault injection: {len(trials)} kill points tried out of {result['events']} writes "
        f"of a {len(result['steps']) - 1}-step run; {len(killed)} killed there; "
        f"{sum(t['second'] == -signal.SIGKILL for t in trials)} killed again in the resume; "
        f"{len(identical)} resumed to identical metrics"
    )
    for t in trials:
        print(f"  {t}")
    assert result["steps"] == [0, 1, 2, 3, 4, 5, 6]
    assert len(trials) == TRIALS and len(killed) == TRIALS, trials
    assert len(identical) == TRIALS, [t for t in trials if not t["identical"]]
    assert not any(t["lock_left"] for t in trials)
    assert all(t["append_only"] for t in trials), "a resume rewrote what metrics.jsonl held"
    kinds = {t["event"].split(":")[0] for t in trials}
    assert {"append", "checkpoint"} <= kinds, kinds  # both kinds of write were hit


if __name__ == "__main__":
    root = Path(sys.argv[1])
    result = worker(root)
    (root / "result.json").write_text(json.dumps(result, indent=1))
