"""Every user error is one line on stderr, exit status 2 (Ctrl-C: 130), and leaves nothing
half-created: one table row per error, run through ``taskgrad.cli.main`` in this process.

Each row: how to set it up (files, a patched function, a held lock), the command line, the
fragment its one ``error:`` line must hold, the exit status, and what must be left on disk: for
a fresh run, nothing under the runs root (setup fails before the run directory is created); for
a resume, the run directory byte for byte as it was. Rows whose error comes after training
started say so (``started``): their run directory stays, resumable.

Two rows need kernel features (a read-only bind mount, a full tmpfs): they are skipped, with the
reason, where mounting is not allowed; a row without mounts covers the same error (ENOSPC from
/dev/full, a read-only refusal through ``os.access``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from taskgrad import cli
from tests.test_train import SMALL

ROOT = Path(__file__).parents[1]
BAD_YAML = "steps: [1,\n"


@dataclass
class Env:
    tmp: Path
    cache: str
    base: Path  # a finished 2-step run with checkpoints (copied per row as needed)
    monkeypatch: pytest.MonkeyPatch
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    @property
    def runs(self) -> Path:
        return self.tmp / "runs"

    def fresh(self, *extra: str) -> list[str]:
        return ["train", *SMALL, f"model.cache_dir={self.cache}", f"runs_root={self.runs}", *extra]

    def copy_base(self) -> Path:
        run = self.tmp / "old-run"
        shutil.copytree(self.base, run)
        return run


@dataclass
class Case:
    name: str
    argv: Callable[[Env], list[str]]
    fragment: str
    code: int = 2
    setup: Callable[[Env], None] | None = None
    started: bool = False  # the error comes after training started: the run directory stays
    skip: Callable[[Env], str | None] | None = None  # a reason to skip, or None


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def dataset(env: Env, rows: str) -> str:
    path = write(env.tmp / "data" / "rows.jsonl", rows)
    return f"tasks=[{{name: d, type: dataset, options: {{path: '{path}', reward: exact}}}}]"


def hold_lock(env: Env) -> None:
    """A live process holds the copied run's lock (as a running training would)."""
    run = env.tmp / "old-run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from taskgrad.rundir import RunLock; "
         f"RunLock.acquire({str(run / 'lock')!r}); print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    env.cleanup.append(lambda: (holder.kill(), holder.wait()))


def interrupt_at(step: int) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        import taskgrad.train as loop

        real = loop.train_step

        def step_fn(trainer, s):
            if s == step:
                raise KeyboardInterrupt
            return real(trainer, s)

        env.monkeypatch.setattr(loop, "train_step", step_fn)

    return setup


def interrupt_in_setup(env: Env) -> None:
    import taskgrad.trainer as T

    def build(*args, **kwargs):
        raise KeyboardInterrupt

    env.monkeypatch.setattr(T, "resolve_model_path", build)


def read_only_by_access(env: Env) -> None:
    """The permission check a non-root user on a read-only disk gets (root passes os.access on
    plain directories, so it is patched for the runs root only)."""
    import taskgrad.rundir as R

    real = os.access
    env.runs.mkdir()
    env.monkeypatch.setattr(
        R.os, "access", lambda p, mode: False if Path(p) == env.runs else real(p, mode)
    )


def mount(env: Env, *options: str) -> str | None:
    """Mount a tmpfs on ``env.runs`` (cleaned up afterwards); a reason string if not allowed."""
    env.runs.mkdir(exist_ok=True)
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(["size=64k", *options]), "tmpfs", str(env.runs)],
        capture_output=True, text=True,
    )  # fmt: skip
    if out.returncode != 0:
        return f"cannot mount a tmpfs here: {out.stderr.strip() or out.returncode}"
    env.cleanup.append(lambda: subprocess.run(["umount", "-l", str(env.runs)], check=False))
    return None


def full_disk(env: Env) -> str | None:
    reason = mount(env)
    if reason is None:
        with contextlib.suppress(OSError), open(env.runs / "filler", "wb") as fh:
            fh.write(b"\0" * 1024 * 1024)  # fills it: ENOSPC part-way
    return reason


def resume_argv(env: Env) -> list[str]:
    return ["train", "--resume", str(env.tmp / "old-run")]


def no_cuda(env: Env) -> str | None:
    return "a CUDA device is present" if torch.cuda.is_available() else None


CASES = [
    Case("unknown key", lambda e: e.fresh("optim.lrr=1"), "config: unknown key 'optim.lrr'"),
    Case("negative clip_eps", lambda e: e.fresh("grpo.clip_eps=-0.2"), "grpo.clip_eps: need"),
    Case("betas outside [0, 1)", lambda e: e.fresh("optim.betas=[0.9, 1.5]"), "optim.betas[1]"),
    Case("NaN learning rate", lambda e: e.fresh("optim.lr=.nan"), "optim.lr: need a finite"),
    Case("warmup as long as the run", lambda e: e.fresh("optim.warmup_steps=4"), "warmup_steps"),
    Case("unknown preset", lambda e: e.fresh("preset=nope"), "unknown preset 'nope'"),
    Case(
        "malformed preset YAML",
        lambda e: e.fresh(f"preset={write(e.tmp / 'p.yaml', BAD_YAML)}"),
        "p.yaml:2:1: invalid YAML",
    ),
    Case(
        "malformed override YAML",
        lambda e: e.fresh("optim.betas=[0.9, 0.99"),
        "(override optim.betas:1:11: invalid YAML",
    ),
    Case("bad scope regex", lambda e: e.fresh("diagnostics.scope=(["), "invalid regex '(['"),
    Case(
        "scope regex matching nothing",
        lambda e: e.fresh("diagnostics.scope=nothing_matches_this"),
        "matches no parameter",
    ),
    Case("cuda without a GPU", lambda e: e.fresh("device=cuda"), "device: cuda", skip=no_cuda),
    Case(
        "runs path under a file",
        lambda e: e.fresh(f"runs_root={write(e.tmp / 'afile', 'x')}/runs"),
        "afile is a file",
    ),
    Case(
        "--run-dir under a file",
        lambda e: [*e.fresh(), "--run-dir", f"{write(e.tmp / 'afile', 'x')}/run"],
        "afile is a file",
    ),
    Case(
        "run directory not empty",
        lambda e: [*e.fresh(), "--run-dir", str(write(e.runs / "x" / "keep.txt", "").parent)],
        "is not empty; continue it with taskgrad train --resume",
    ),
    Case(
        "read-only runs root (refused by the permission check)",
        lambda e: e.fresh(),
        "runs: permission denied",
        setup=read_only_by_access,
    ),
    Case(
        "read-only file system (a read-only tmpfs)",
        lambda e: e.fresh(),
        "runs: read-only file system",
        skip=lambda e: mount(e, "ro"),
    ),
    Case(
        "full disk at creation (a full tmpfs)",
        lambda e: e.fresh(),
        "no space left on device",
        skip=full_disk,
    ),
    Case(
        "full disk during a resume (metrics.jsonl on /dev/full)",
        resume_argv,
        "cannot write",
        setup=lambda e: (e.copy_base(), _full_metrics(e)),
    ),
    Case(
        "full disk during training (metrics appends fail from step 2)",
        lambda e: e.fresh("run_name=r"),
        "metrics.jsonl: no space left on device; the run stopped after step 1; resume with "
        "taskgrad train --resume",
        setup=lambda e: _disk_fills_up(e, appends=2),
        started=True,
    ),
    Case(
        "one-prompt dataset",
        lambda e: e.fresh(dataset(e, '{"prompt": "1+1=", "answer": "2"}\n')),
        "tasks[0] (d): no held-out prompts",
    ),
    Case(
        "malformed dataset line",
        lambda e: e.fresh(dataset(e, '{"prompt": "1+1=", "answer": "2"}\n{oops\n')),
        "rows.jsonl:2: invalid JSON",
    ),
    Case(
        "Ctrl-C during setup",
        lambda e: e.fresh(),
        "interrupted before training started",
        code=130,
        setup=interrupt_in_setup,
    ),
    Case(
        "Ctrl-C during training",
        lambda e: e.fresh("run_name=r"),
        "interrupted at step 3; resume with taskgrad train --resume",  # (it continues from ...)
        code=130,
        setup=interrupt_at(3),
        started=True,
    ),
    Case(
        "a run stopped by non-finite parameters (float16 AdamW)",
        lambda e: e.fresh("model.dtype=float16"),
        "became non-finite in the optimizer step of step 1",
        started=True,
    ),
    Case(
        "resume of a run still being written",
        resume_argv,
        "is in use by process",
        setup=lambda e: (e.copy_base(), hold_lock(e)),
    ),
    Case(
        "resume of a directory that is no run",
        lambda e: ["train", "--resume", str(e.tmp)],
        "holds no config.yaml",
    ),
    Case(
        "resume with overrides",
        lambda e: [*resume_argv(e), "steps=9"],
        "overrides, --config and --run-dir are not allowed",
        setup=lambda e: e.copy_base(),
    ),
    Case(
        "resume of a run whose config.yaml is not YAML",
        resume_argv,
        "config.yaml:2:1: invalid YAML",
        setup=lambda e: (e.copy_base(), write(e.tmp / "old-run" / "config.yaml", "steps: [\n")),
    ),
    Case(
        "report on a torn line in the middle of metrics.jsonl",
        lambda e: ["report", str(e.tmp / "old-run"), "--out", str(e.tmp / "rep")],
        "metrics.jsonl:2: not a JSON record",
        setup=lambda e: (e.copy_base(), _tear_line_2(e)),
    ),
    Case("compare with no seeds", lambda e: ["compare", "--seeds", "0"], "--seeds: must be"),
]


def _disk_fills_up(env: Env, appends: int) -> None:
    """Appends to metrics.jsonl fail with ENOSPC after its first ``appends`` (a filling disk)."""
    import taskgrad.rundir as R

    real, calls = R.append_bytes, iter(range(10**6))

    def append_bytes(path, data):
        if Path(path).name == "metrics.jsonl" and next(calls) >= appends:
            with R.naming(path):
                raise OSError(28, "No space left on device")
        real(path, data)

    env.monkeypatch.setattr(R, "append_bytes", append_bytes)


def _full_metrics(env: Env) -> None:
    metrics = env.tmp / "old-run" / "metrics.jsonl"
    metrics.unlink()
    metrics.symlink_to("/dev/full")


def _tear_line_2(env: Env) -> None:
    metrics = env.tmp / "old-run" / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text(lines[0] + lines[1][: len(lines[1]) // 2] + "\n" + "".join(lines[2:]))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def base(tmp_path_factory, cache):
    run = tmp_path_factory.mktemp("base") / "run"
    argv = ["train", *SMALL, f"model.cache_dir={cache}", "steps=2", "--run-dir", str(run)]
    assert cli.main(argv) == 0
    return run


def snapshot(path: Path) -> dict[str, str]:
    """Every file under ``path`` (symlinks by target) -> its content hash."""
    out = {}
    for p in sorted(path.rglob("*")) if path.exists() else []:
        if p.is_symlink():
            out[str(p)] = f"-> {os.readlink(p)}"
        elif p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_user_error_is_one_line(case, tmp_path, cache, base, monkeypatch, capsys):
    env = Env(tmp_path, cache, base, monkeypatch)
    try:
        reason = case.skip(env) if case.skip else None
        if reason:
            pytest.skip(reason)
        if case.setup:
            case.setup(env)
        argv = case.argv(env)
        before = snapshot(env.tmp)
        capsys.readouterr()
        try:
            code = cli.main(argv)
        except BaseException as e:  # Ctrl-C included: it must not escape main either
            pytest.fail(f"main raised {e!r} instead of one line")
        err = capsys.readouterr().err
        after = snapshot(env.tmp)
    finally:
        for undo in reversed(env.cleanup):
            undo()
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert code == case.code, err
    assert "Traceback" not in err and len(errors) == 1, err
    assert case.fragment in errors[0], err
    others = [ln for ln in err.splitlines() if not ln.startswith(("error: ", "note: "))]
    assert not others, err  # nothing but notes besides the one error line
    changed = sorted(set(before.items()) ^ set(after.items()))
    if case.started:  # only the new run directory, with its config
        new_runs = {Path(f).relative_to(env.runs).parts[0] for f, _ in changed}
        assert len(new_runs) == 1 and (env.runs / new_runs.pop() / "config.yaml").exists()
    else:  # nothing created, nothing changed (a fresh run's root, a resumed run's files)
        assert changed == [], f"setup failed but changed {changed}"


def test_the_table_covers_every_error_of_the_issue():
    """The cases of issue 11, by row name (a guard against dropping one)."""
    names = " | ".join(c.name for c in CASES)
    for needed in (
        "read-only", "full disk", "runs path under a file", "malformed preset YAML",
        "malformed override YAML", "cuda without a GPU", "bad scope regex", "one-prompt dataset",
        "Ctrl-C", "negative clip_eps", "still being written",
    ):  # fmt: skip
        assert needed in names, needed
    print(f"{len(CASES)} rows")


@pytest.mark.slow
def test_ctrl_c_in_a_real_process(tmp_path, cache):
    """SIGINT to `taskgrad train` mid-run: one line naming the step and the resume command, exit
    status 130, the lock released; the resume then finishes the run."""
    run = tmp_path / "run"
    args = [*SMALL, f"model.cache_dir={cache}", "steps=12", "checkpoint_every=1"]
    cmd = [sys.executable, "-m", "taskgrad.cli", "train", *args, "--run-dir", str(run)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "step_000002").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: interrupted at step "), err
    assert f"resume with taskgrad train --resume {run}" in lines[0]
    assert not (run / "lock").exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "taskgrad.cli", "train", "--resume", str(run)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    from taskgrad.rundir import read_records

    assert [r["step"] for r in read_records(run / "metrics.jsonl")] == list(range(13))


@pytest.mark.slow
def test_a_run_listed_twice_counts_once(tmp_path, capsys):
    """`taskgrad report RUN RUN/` (or a symlink to it) used to count one run as two seeds."""
    pytest.importorskip("matplotlib")
    from tests.synthetic_runs import write_run

    run = write_run(tmp_path / "s0", seed=0, steps=8)
    (tmp_path / "alias").symlink_to(run)
    out = tmp_path / "report"
    argv = ["report", str(run), f"{run}/", str(tmp_path / "alias"), "--out", str(out)]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("is listed more than once") == 2 and "it counts once" in err
    assert "taskgrad report: 1 run, 1 configuration(s)" in (out / "report.md").read_text()
