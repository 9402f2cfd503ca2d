"""The run directory's guarantees, one by one, without training: append-only metrics with resume
markers, torn lines, complete checkpoints only, the lock, atomic creation, restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from taskgrad.config import load_config
from taskgrad.numerics import NonFiniteError
from taskgrad.rundir import (
    LOCK,
    MARKER,
    RunDir,
    RunLock,
    RunLocked,
    checkpoint_problem,
    read_records,
)


def lines(*items) -> str:
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in items)


# --- metrics: segments and torn lines ---------------------------------------------------------


def test_a_resume_marker_drops_the_records_after_its_step(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text(
        lines(
            {"step": 0, "a": 0},
            {"step": 1, "a": 1},
            {"step": 2, "a": 2},
            {"step": 3, "a": 3},
            {"resume": 2},
            {"step": 3, "a": 30},
            {"step": 4, "a": 40},
        )
    )
    assert [(r["step"], r["a"]) for r in read_records(f)] == [
        (0, 0),
        (1, 1),
        (2, 2),
        (3, 30),
        (4, 40),
    ]


def test_a_resume_before_any_record_survives_nested_segments(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text(
        lines(
            {"step": 0},
            {"step": 1},
            {"step": 2},
            {"resume": 1},
            {"step": 2, "x": 1},
            {"step": 3, "x": 1},
            {"resume": 2},
            {"step": 3, "x": 2},
        )
    )
    assert [(r["step"], r.get("x")) for r in read_records(f)] == [
        (0, None),
        (1, None),
        (2, 1),
        (3, 2),
    ]


def test_a_torn_last_line_is_dropped_with_a_warning_naming_file_and_line(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text(lines({"step": 0}, {"step": 1}) + '{"step": 2, "task/a/rew')
    warnings = []
    assert [r["step"] for r in read_records(f, warn=warnings.append)] == [0, 1]
    assert len(warnings) == 1 and f"{f}:3:" in warnings[0]


def test_a_torn_line_in_the_middle_is_an_error_naming_file_and_line(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text(lines({"step": 0}, '{"step": 1, "x', {"step": 2}))
    with pytest.raises(ValueError, match=f"^{f}:2: "):
        read_records(f)


def test_a_torn_line_closed_by_a_resume_is_dropped(tmp_path):
    run = RunDir(tmp_path)
    run.metrics_path.write_text(lines({"step": 0}, {"step": 1}) + '{"step": 2, "x": 1')
    run.mark_resume(1)  # ends the torn line first, so the marker is a line of its own
    run.log({"step": 2, "x": 2})
    warnings = []
    assert read_records(run.metrics_path, warn=warnings.append) == [
        {"step": 0},
        {"step": 1},
        {"step": 2, "x": 2},
    ]
    assert f"{run.metrics_path}:3:" in warnings[0]
    # nothing that was written before the resume was rewritten: the old bytes are a prefix
    assert run.metrics_path.read_text().startswith(lines({"step": 0}, {"step": 1}) + '{"step": 2')


def test_metrics_only_grow(tmp_path):
    run = RunDir(tmp_path)
    run.log({"step": 0, "v": float("nan")})
    first = run.metrics_path.read_bytes()
    run.mark_resume(0)
    run.log({"step": 1})
    assert run.metrics_path.read_bytes().startswith(first)
    assert run.records() == [{"step": 0, "v": None}, {"step": 1}]


def test_analysis_reader_honours_markers_and_torn_lines(tmp_path):
    pytest.importorskip("pandas")
    from taskgrad.analysis.runs import read_metrics

    f = tmp_path / "metrics.jsonl"
    f.write_text(
        lines({"step": 0, "m": 0.5}, {"step": 1, "m": 1.0}, {"step": 2, "m": 2.0}, {"resume": 1})
        + lines({"step": 2, "m": 20.0})
        + '{"step": 3'
    )
    frame = read_metrics(f)
    assert list(frame.index) == [0, 1, 2] and frame.loc[2, "m"] == 20.0


# --- checkpoints ------------------------------------------------------------------------------


class FakeModel(torch.nn.Module):
    """Enough of a PreTrainedModel for save_checkpoint: parameters and save_pretrained."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.full((4,), value))

    def save_pretrained(self, path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), Path(path) / "weights.pt")


class FakeTokenizer:
    def save_pretrained(self, path) -> None:
        (Path(path) / "tokenizer.json").write_text("{}")


def save(run: RunDir, step: int, keep: int = 2, model=None) -> Path:
    return run.save_checkpoint(step, model or FakeModel(), FakeTokenizer(), {"step": step}, keep)


def test_checkpoints_are_complete_and_only_complete_ones_count(tmp_path):
    run = RunDir(tmp_path)
    for step in (2, 4):
        save(run, step)
    root = tmp_path / "checkpoints"
    assert [p.name for p in run.checkpoints()] == ["step_000002", "step_000004"]
    assert checkpoint_problem(root / "step_000004", 4) is None
    # a later checkpoint cut off before its marker, and a finished-looking .tmp one
    (root / "step_000006").mkdir()
    (root / "step_000006" / "trainer.pt").write_bytes(b"")
    tmp = root / "step_000008.tmp"
    tmp.mkdir()
    (tmp / MARKER).write_text(json.dumps({"step": 8, "files": {}}))
    notes = []
    assert run.checkpoints(note=notes.append)[-1].name == "step_000004"
    assert len(notes) == 1 and "step_000006" in notes[0] and "no completion marker" in notes[0]


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda p: (p / "trainer.pt").write_bytes(b"x"), "trainer.pt has 1 bytes"),
        (lambda p: (p / "weights.pt").unlink(), "weights.pt is missing"),
        (lambda p: (p / MARKER).write_text("{"), "unreadable completion marker"),
        (lambda p: (p / MARKER).unlink(), "no completion marker"),
    ],
)
def test_a_damaged_checkpoint_is_skipped_for_the_previous_one(tmp_path, damage, problem):
    run = RunDir(tmp_path)
    save(run, 2)
    damage(save(run, 4))
    notes = []
    assert [p.name for p in run.checkpoints(note=notes.append)] == ["step_000002"]
    assert problem in notes[0]


def test_checkpoints_sort_by_step_not_by_name(tmp_path):
    run = RunDir(tmp_path)
    save(run, 999_999, keep=5)
    save(run, 1_000_000, keep=5)
    assert run.checkpoints()[-1].name == "step_1000000"


def test_old_checkpoints_go_only_after_a_new_one_is_complete(tmp_path, monkeypatch):
    import taskgrad.rundir as R

    run = RunDir(tmp_path)
    save(run, 2, keep=1)

    def die(stage):
        if stage == "marker":
            raise RuntimeError("killed")

    monkeypatch.setattr(R, "checkpoint_stage", die)
    with pytest.raises(RuntimeError):
        save(run, 4, keep=1)
    assert [p.name for p in run.checkpoints()] == ["step_000002"]
    monkeypatch.setattr(R, "checkpoint_stage", lambda stage: None)
    save(run, 6, keep=1)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000006"]  # no .tmp


def test_a_non_finite_model_is_never_checkpointed(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(NonFiniteError, match="not saving a checkpoint of a non-finite model"):
        save(run, 2, model=FakeModel(float("nan")))
    assert run.checkpoints() == [] and not (tmp_path / "checkpoints" / "step_000002").exists()


# --- the lock ---------------------------------------------------------------------------------


def test_a_second_writer_is_refused_with_the_owner_pid(tmp_path):
    first = RunLock.acquire(tmp_path / LOCK)
    with pytest.raises(RunLocked, match=f"in use by process {os.getpid()} "):
        RunLock.acquire(tmp_path / LOCK)
    first.release()
    RunLock.acquire(tmp_path / LOCK).release()
    assert not (tmp_path / LOCK).exists()


def test_a_lock_held_by_another_live_process(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from taskgrad.rundir import RunLock; "
         f"RunLock.acquire({str(tmp_path / LOCK)!r}); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=f"process {holder.pid} "):
            RunLock.acquire(tmp_path / LOCK)
    finally:
        holder.kill()
        holder.wait()
    RunLock.acquire(tmp_path / LOCK).release()  # the kernel dropped the dead holder's lock


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_note(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    (tmp_path / LOCK).write_text(json.dumps({"pid": int(dead), "host": "h", "since": "then"}))
    lock = RunLock.acquire(tmp_path / LOCK)
    assert f"left by process {dead} on h" in capsys.readouterr().err
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    lock.release()


# --- creation and restart ---------------------------------------------------------------------


def test_create_is_atomic_and_locked(tmp_path):
    cfg = load_config(None, ["steps=3"])
    path = tmp_path / "runs" / "a"
    run = RunDir.create(cfg, RunDir.new_path(cfg, path))
    assert sorted(p.name for p in path.iterdir()) == ["config.yaml", LOCK]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["a"]  # no temporary left
    with pytest.raises(RunLocked):
        RunDir.open(path)
    assert RunDir.load_config(path).steps == 3
    with pytest.raises(FileExistsError, match="--resume"):
        RunDir.new_path(cfg, path)
    run.close()
    assert not (path / LOCK).exists()


def test_new_path_refuses_a_path_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    cfg = load_config(None, [f"runs_root={tmp_path / 'afile' / 'runs'}"])
    with pytest.raises(ValueError, match=r"afile is a file"):
        RunDir.new_path(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_failed_create_leaves_nothing(tmp_path, monkeypatch):
    import taskgrad.rundir as R

    def refuse(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(R.RunLock, "acquire", classmethod(lambda cls, p: refuse()))
    cfg = load_config(None)
    with pytest.raises(OSError):
        RunDir.create(cfg, tmp_path / "new" / "deeper" / "run")
    assert list(tmp_path.iterdir()) == []  # the missing parents it made are gone too


def test_restart_moves_partial_metrics_aside(tmp_path):
    run = RunDir(tmp_path)
    run.log({"step": 0})
    assert run.restart().name == "metrics.partial-1.jsonl"
    run.log({"step": 0})
    assert run.restart().name == "metrics.partial-2.jsonl"
    assert run.records() == [] and run.restart() is None


def test_config_yaml_that_is_not_yaml_is_one_line(tmp_path):
    (tmp_path / "config.yaml").write_text("steps: [1,\n")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'config.yaml'}:2:1: invalid YAML"):
        RunDir.load_config(tmp_path)


def test_describe_os_error_names_the_path():
    from taskgrad.rundir import describe_os_error

    assert describe_os_error(OSError(28, "x", "/d/m.jsonl")) == (
        "cannot write /d/m.jsonl: no space left on device"
    )
    assert describe_os_error(OSError(30, "x", "/ro")) == "cannot write /ro: read-only file system"


def test_evals_jsonl_follows_the_resume_markers(tmp_path):
    pytest.importorskip("pandas")
    from taskgrad.analysis.runs import read_evals

    run = RunDir(tmp_path)
    run.log_eval(0, {"a": [0, 0]})
    run.log_eval(2, {"a": [1, 0]})
    run.log_eval(4, {"a": [1, 1]})
    run.evals_path.write_bytes(run.evals_path.read_bytes() + b'{"step": 6, "ta')  # torn
    run.mark_resume(2)  # step 4 came after the checkpoint of step 2
    assert sorted(read_evals(run.evals_path)) == [0, 2]
    run.log_eval(4, {"a": [0, 1]})
    assert read_evals(run.evals_path)[4]["a"].tolist() == [0.0, 1.0]


def test_restart_moves_evals_aside_too(tmp_path):
    run = RunDir(tmp_path)
    run.log({"step": 0})
    run.log_eval(0, {"a": [1]})
    assert run.restart().name == "metrics.partial-1.jsonl"
    assert (tmp_path / "evals.partial-1.jsonl").exists() and not run.evals_path.exists()


def test_truncate_metrics_of_the_former_api_only_appends(tmp_path):
    run = RunDir(tmp_path)
    for step in range(4):
        run.log({"step": step})
    before = run.metrics_path.read_bytes()
    assert [r["step"] for r in run.truncate_metrics(1)] == [0, 1]
    assert run.metrics_path.read_bytes().startswith(before)
