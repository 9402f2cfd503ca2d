"""The run directory: the one place a run writes to, and the only thing reports read.

runs/<name>/
  config.yaml        the resolved config (re-runnable with `taskgrad train --config`)
  versions.json      python, torch, transformers, accelerate, taskgrad, device, model path
  metrics.jsonl      one JSON record per step (step 0: initial evaluation), flat keys; append-only
  evals.jsonl        per evaluation and task, each held-out prompt's outcome (1 correct, 0 not):
                     {"step": 75, "task": "code", "correct": "0110..."}, prompts in eval_set order;
                     append-only, with the same resume markers as metrics.jsonl
  summary.json       final numbers (written when the run finishes)
  lock               held by the process writing the run: its pid, host and start time
  checkpoints/step_000040/   model + tokenizer (save_pretrained), trainer.pt, checkpoint.json
  metrics.partial-1.jsonl    metrics of an attempt that never checkpointed (see ``restart``;
                             evals.partial-1.jsonl likewise)

What a kill -9 (or a full disk, or a second process) at any moment cannot do:

* **Lose or rewrite what was written.** ``metrics.jsonl`` only grows (``O_APPEND`` writes). A
  resume from the checkpoint of step S appends a *resume marker* ``{"resume": S, ...}`` (a record
  without ``step``) and starts a new segment; readers (``read_records``, and through it
  ``RunDir.records`` and ``taskgrad.analysis.runs.read_metrics``) drop the records after step S
  that came before the marker, so the steps logged after the checkpoint and then repeated count
  once, with the repeated values. ``config.yaml``, ``versions.json`` and ``summary.json`` are
  replaced whole (temporary file, fsync, rename), never truncated in place.
* **Leave a torn line that blocks the run.** A kill inside a write can leave a last line without
  its end. Such a line at the end of a segment (the file's last line, or just before a resume
  marker) is dropped with a warning naming ``file:line``; a malformed line anywhere else is an
  error naming ``file:line``.
* **Resume from an incomplete checkpoint.** A checkpoint is written into ``step_N.tmp``, every file
  fsynced, then ``checkpoint.json`` (the completion marker: the step and each file's size), then
  renamed to ``step_N``. A resume takes the newest ``step_N`` whose marker is present and matches
  the files on disk; ``*.tmp`` directories are never used, and a ``step_N`` that fails the check
  is skipped with a note. Older checkpoints are removed only after a newer one is complete (each
  first renamed to ``*.tmp``, so a half-removed one is never taken), and ``metrics.jsonl`` is
  fsynced before a checkpoint so that no power loss leaves a checkpoint ahead of its metrics. A
  model with a non-finite parameter is never saved.
* **Interleave two writers.** The writing process holds an exclusive ``flock`` on ``lock``
  (which also records its pid); a second one stops with one line naming the holder. The kernel
  drops the lock when its holder dies, so a lock file left by a killed run is taken over, with a
  note naming the dead pid.
* **Leave a half-created directory.** A new run directory is built under a temporary name (its
  config written, the lock taken) and renamed into place; ``trainer.setup`` creates it only
  after every check that can fail has passed.

A run with no complete checkpoint yet is resumed by starting it over from step 0 in place, with
its config (``restart``: the partial metrics are moved aside to ``metrics.partial-<n>.jsonl``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import platform
import re
import secrets
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from taskgrad.config import Config, ConfigError, from_dict, to_dict, validate, yaml_problem
from taskgrad.metrics import clean
from taskgrad.summary import summarize

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
EVALS = "evals.jsonl"
LOCK = "lock"
MARKER = "checkpoint.json"  # a checkpoint's completion marker, written last
RESUME = "resume"  # the key of a resume marker record in metrics.jsonl
_CHECKPOINT_NAME = re.compile(r"step_(\d+)")
# The errors of a disk that cannot take the write: one line naming the path (see describe_os_error)
DISK_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def note(message: str) -> None:
    """A one-line note on stderr (what the run did on its own: a lock taken over, a checkpoint
    skipped)."""
    print(f"note: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def checkpoint_stage(stage: str) -> None:
    """Called after each stage of a checkpoint write (``model``, ``tokenizer``, ``state``,
    ``marker``, ``renamed``, ``pruned``). A no-op: the fault-injection test
    (tests/test_faults.py) replaces it to kill the process exactly there."""


# --- writing files ---------------------------------------------------------------------------


class RunLocked(RuntimeError):
    """Another live process holds the run directory's lock."""


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """Re-raise an ``OSError`` that names no file (Python's file writes, many libraries) as one
    naming ``path``, and library errors that only quote an OS error (safetensors: "... (os error
    28)") as that ``OSError``: the CLI turns both into one line naming the path."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    except Exception as e:
        found = re.search(r"os error (\d+)", str(e))
        if found is None:
            raise
        code = int(found[1])
        raise OSError(code, os.strerror(code), str(path)) from e


def describe_os_error(e: OSError) -> str:
    """One line for an OSError: the path and what went wrong, in words, then its notes (e.g.
    how to resume, added by ``RunDir.guard``)."""
    if e.errno in DISK_ERRNOS and e.filename is not None:
        line = f"cannot write {e.filename}: {DISK_ERRNOS[e.errno]}"
    elif e.filename is not None and e.strerror:
        line = f"{e.filename}: {e.strerror.lower()}"
    else:  # raised with a message of our own (FileExistsError("run directory ... is not empty"))
        line = str(e)
    return "; ".join([line, *getattr(e, "__notes__", [])])


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (a no-op where directories cannot be
    fsynced)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` whole: a reader (or a kill) sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with naming(path):
            with open(tmp, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def append_bytes(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` with ``O_APPEND`` writes: what is there is never touched."""
    with naming(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)


# --- reading metrics -------------------------------------------------------------------------


def read_records(path: Path, warn: Callable[[str], None] = warn) -> list[dict[str, Any]]:
    """The step records of a metrics file, segments resolved (see the module docstring).

    A resume marker ``{"resume": S}`` drops the records before it whose step is after S. A line
    that is not a JSON object is dropped with a warning when it ends a segment (a write cut off
    by a kill); anywhere else it raises ValueError naming ``path:line``.
    """
    path = Path(path)
    if not path.exists():
        return []
    records: list[dict[str, Any]] = []
    torn: int | None = None  # line number of a malformed line, allowed only at a segment end
    with naming(path):
        data = path.read_bytes()
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:  # JSON errors and a multi-byte character cut in two
            record = None
        if not isinstance(record, dict):
            if torn is not None:
                raise ValueError(f"{path}:{torn}: not a JSON record (and more lines follow it)")
            torn = lineno
            continue
        if RESUME in record:
            if torn is not None:
                warn(f"{path}:{torn}: dropped a torn line (a write was cut off before a resume)")
                torn = None
            step = record[RESUME]
            records = [r for r in records if r["step"] <= step]
            continue
        if torn is not None:
            raise ValueError(f"{path}:{torn}: not a JSON record (and more lines follow it)")
        if not isinstance(record.get("step"), int):
            raise ValueError(f"{path}:{lineno}: a record without an integer 'step'")
        records.append(record)
    if torn is not None:
        warn(f"{path}:{torn}: dropped a torn last line (a write was cut off)")
    return records


# --- the lock ---------------------------------------------------------------------------------


def _owner(fd: int) -> str | None:
    """'process 123 on host h (since ...)' from a lock file's content; None if empty."""
    with contextlib.suppress(OSError, ValueError):
        info = json.loads(os.pread(fd, 4096, 0) or b"null")
        if isinstance(info, dict) and "pid" in info:
            return f"process {info['pid']} on {info.get('host', '?')} (since {info.get('since')})"
    return None


class RunLock:
    """An exclusive ``flock`` on ``<run>/lock``, with the owner's pid, host and start in the file.

    The kernel releases a flock when its holder dies (kill -9 included), so a lock file left by a
    dead run never blocks: it is taken over, with a note naming the dead owner.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, path: Path) -> RunLock:
        path = Path(path)
        while True:
            with naming(path):
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _owner(fd) or "another process"
                os.close(fd)
                raise RunLocked(
                    f"{path.parent} is in use by {owner} (lock file {path}); a second writer "
                    "would interleave its steps: wait for it to end or stop it first"
                ) from None
            # A releasing owner unlinks the file: if ours is no longer the file at ``path``,
            # another process may lock the new one, so start again.
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _owner(fd)
        if previous is not None:
            note(f"taking over the lock of {path.parent} left by {previous}, no longer running")
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still held: see the inode check in acquire
        os.close(self.fd)
        self.fd = -1


# --- the run directory ------------------------------------------------------------------------


class RunDir:
    def __init__(self, path: Path, lock: RunLock | None = None) -> None:
        self.path = Path(path)
        self.metrics_path = self.path / METRICS
        self.evals_path = self.path / EVALS
        self.lock = lock

    # -- creation / resume ---------------------------------------------------------------------
    @staticmethod
    def new_path(cfg: Config, path: Path | None = None) -> Path:
        """Where a new run goes, checked (not created): an empty or absent directory in a
        writable place. Raises one-line errors (FileExistsError, ValueError, OSError)."""
        if path is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            path = Path(cfg.runs_root) / (cfg.run_name or f"{stamp}-{cfg.preset}-s{cfg.seed}")
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a directory")
        if path.is_dir() and any(path.iterdir()):
            raise FileExistsError(
                f"run directory {path} is not empty; continue it with taskgrad train --resume "
                f"{path} (a run with no checkpoint yet starts over from step 0)"
            )
        ancestor = path.absolute().parent  # where the directory is created (renamed into)
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise ValueError(f"cannot create the run directory {path}: {ancestor} is a file")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            read_only = os.statvfs(ancestor).f_flag & os.ST_RDONLY
            code = errno.EROFS if read_only else errno.EACCES
            raise OSError(code, os.strerror(code), str(ancestor))
        return path

    @classmethod
    def create(cls, cfg: Config, path: Path) -> RunDir:
        """Create the run directory ``path`` (checked by ``new_path``) with its config, locked.

        It is assembled under a temporary name and renamed into place, so a kill or an error
        leaves no half-created run directory (missing parents created here are removed again).
        """
        path = Path(path)
        made = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
        tmp: Path | None = None
        try:
            with naming(path.parent):
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.parent / f".{path.name}.new-{os.getpid()}-{secrets.token_hex(4)}"
                tmp.mkdir()  # (not mkdtemp: the run directory keeps the umask's permissions)
            write_atomic(tmp / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
            lock = RunLock.acquire(tmp / LOCK)
            try:
                os.rename(tmp, path)  # replaces an empty directory, fails on a non-empty one
            except OSError as e:
                lock.release()
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise FileExistsError(
                        f"run directory {path} appeared meanwhile and is not empty"
                    ) from None
                raise OSError(e.errno, e.strerror, str(path)) from None
            lock.path = path / LOCK
            fsync_dir(path.parent)
        except BaseException as e:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            for p in made:  # innermost first
                with contextlib.suppress(OSError):
                    p.rmdir()
            if isinstance(e, OSError) and e.errno in DISK_ERRNOS:  # name the run, not a temporary
                raise OSError(e.errno, e.strerror, str(path)) from e
            raise
        return cls(path, lock)

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """An existing run directory, locked for writing (resume)."""
        path = Path(path)
        if not (path / "config.yaml").exists():
            raise FileNotFoundError(f"--resume: {path} holds no config.yaml (not a run directory)")
        return cls(path, RunLock.acquire(path / LOCK))

    def close(self) -> None:
        """Release the lock (the run's files stay)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def discard(self) -> None:
        """Remove a run directory this process just created (setup failed after ``create``)."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)

    @staticmethod
    def load_config(path: Path) -> Config:
        """The run's config, validated; one-line ConfigError naming the file if it is broken."""
        file = Path(path) / "config.yaml"
        with naming(file):
            text = file.read_text()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{file}:{yaml_problem(e)}") from None
        try:
            return validate(from_dict(Config, data))
        except ConfigError as e:
            raise ConfigError(f"{file}: {e}") from None

    def write_versions(self, extra: dict[str, Any]) -> None:
        import accelerate
        import transformers

        import taskgrad

        info = {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "accelerate": accelerate.__version__,
            "taskgrad": taskgrad.__version__,
            "cuda": torch.version.cuda,
            "command": sys.argv,
            **extra,
        }
        write_atomic(self.path / "versions.json", json.dumps(info, indent=2))

    # -- metrics -------------------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: clean(v) for k, v in record.items()})
        append_bytes(self.metrics_path, (line + "\n").encode())

    def log_eval(self, step: int, outcomes: dict[str, list[int]], samples: int = 1) -> None:
        """Per-prompt held-out outcomes of one evaluation, a line per task: for each prompt, how
        many of its ``samples`` completions were correct (one digit)."""
        lines = [
            json.dumps(
                {"step": step, "task": t, "samples": samples, "correct": "".join(map(str, c))}
            )
            for t, c in outcomes.items()
        ]
        append_bytes(self.evals_path, "".join(line + "\n" for line in lines).encode())

    def records(self) -> list[dict[str, Any]]:
        """The run's step records, segments resolved (see ``read_records``)."""
        return read_records(self.metrics_path)

    def mark_resume(self, step: int) -> None:
        """Start a new segment of metrics.jsonl and evals.jsonl: records after ``step`` written
        before this no longer count."""
        marker = {
            RESUME: step,
            "time": datetime.now().isoformat(timespec="seconds"),
            "pid": os.getpid(),
        }
        for path in (self.metrics_path, self.evals_path):
            if path == self.evals_path and not path.exists():
                continue  # no evaluation logged yet: nothing to mark
            prefix = b""
            with naming(path):
                if path.exists() and path.stat().st_size > 0:
                    with open(path, "rb") as fh:
                        fh.seek(-1, os.SEEK_END)
                        if fh.read(1) != b"\n":
                            prefix = b"\n"  # end a torn last line: the marker is a line of its own
            append_bytes(path, prefix + (json.dumps(marker) + "\n").encode())

    def truncate_metrics(self, last_step: int) -> list[dict[str, Any]]:
        """For callers of the former API (the TRL integration): ``mark_resume(last_step)`` and the
        records that count. Nothing is truncated any more: the file only grows."""
        self.mark_resume(last_step)
        return self.records()

    def restart(self) -> Path | None:
        """Before starting a run over from step 0 in place: move its partial metrics aside to
        ``metrics.partial-<n>.jsonl`` (and evals.jsonl to ``evals.partial-<n>.jsonl``; renames:
        nothing is deleted); returns where the metrics went."""
        if not self.metrics_path.exists() and not self.evals_path.exists():
            return None
        n = 1
        while any(self.path.glob(f"*.partial-{n}.jsonl")):
            n += 1
        moved = None
        for path in (self.metrics_path, self.evals_path):
            if path.exists():
                target = self.path / f"{path.stem}.partial-{n}.jsonl"
                with naming(path):
                    os.rename(path, target)
                moved = moved or target
        fsync_dir(self.path)
        return moved

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoints(self, note: Callable[[str], None] | None = None) -> list[Path]:
        """Complete checkpoints, oldest first. ``*.tmp`` directories are never listed; a
        ``step_N`` that fails ``checkpoint_problem`` is skipped (and reported to ``note``)."""
        root = self.path / CHECKPOINTS
        if not root.is_dir():
            return []
        found = []
        for p in root.iterdir():
            m = _CHECKPOINT_NAME.fullmatch(p.name)
            if m is None or not p.is_dir():
                continue
            problem = checkpoint_problem(p, int(m[1]))
            if problem is None:
                found.append((int(m[1]), p))
            elif note is not None:
                note(f"ignoring checkpoint {p}: {problem}")
        return [p for _, p in sorted(found)]

    def save_checkpoint(
        self, step: int, model, tokenizer, state: dict[str, Any], keep: int
    ) -> Path:
        """Write ``checkpoints/step_<step>`` (weights, tokenizer, ``trainer.pt`` = ``state``,
        then the ``checkpoint.json`` marker) and rename it into place; then keep the ``keep``
        most recent complete checkpoints. Refuses a model with a non-finite parameter."""
        from taskgrad.numerics import NonFiniteError, nonfinite_parameters

        bad = nonfinite_parameters(model.named_parameters())
        if bad:
            raise NonFiniteError(
                f"step {step}: not saving a checkpoint of a non-finite model ({len(bad)} "
                f"parameter tensor(s) hold NaN/inf, e.g. {bad[0]})"
            )
        if self.metrics_path.exists():  # metrics up to this step reach the disk first
            with naming(self.metrics_path):
                fsync_file(self.metrics_path)
        root = self.path / CHECKPOINTS
        target = root / f"step_{step:06d}"
        tmp = root / f"{target.name}.tmp"
        with naming(tmp):
            root.mkdir(exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp)
            checkpoint_stage("model")
            tokenizer.save_pretrained(tmp)
            checkpoint_stage("tokenizer")
            with open(tmp / "trainer.pt", "wb") as fh:  # a file object: ENOSPC is an OSError
                torch.save(state, fh)
            checkpoint_stage("state")
            files = {}
            for f in sorted(tmp.rglob("*")):
                if f.is_file():
                    fsync_file(f)
                    files[f.relative_to(tmp).as_posix()] = f.stat().st_size
            write_atomic(tmp / MARKER, json.dumps({"step": step, "files": files}, indent=1))
            fsync_dir(tmp)
            checkpoint_stage("marker")
            if target.exists():  # an incomplete one of the same step (never a complete one)
                os.rename(target, root / f"{target.name}.stale.tmp")
            os.rename(tmp, target)
            fsync_dir(root)
            checkpoint_stage("renamed")
            for old in self.checkpoints()[:-keep]:
                doomed = old.with_name(f"{old.name}.old.tmp")
                os.rename(old, doomed)  # a half-removed checkpoint is never taken for a whole one
                shutil.rmtree(doomed, ignore_errors=True)
            for leftover in root.glob("*.tmp"):
                shutil.rmtree(leftover, ignore_errors=True)
            checkpoint_stage("pruned")
        return target

    def finish(self, tasks: list[str]) -> None:
        """Write summary.json; the run is over, so its lock is released too."""
        summary = summarize(self.records(), tasks)
        write_atomic(self.path / "summary.json", json.dumps(clean(summary), indent=2))
        self.close()

    # -- the process around the loop -----------------------------------------------------------
    @contextlib.contextmanager
    def guard(self, step: Callable[[], int], steps: int) -> Iterator[None]:
        """Around the training loop (``step()``: the last step logged): Ctrl-C becomes
        ``Interrupted`` (one line naming the step in progress and how to resume), a disk error
        names the last step logged and the resume command too, and the lock is released however
        the loop ends."""
        try:
            yield
        except KeyboardInterrupt:
            message = self._stopped(f"interrupted at step {min(step() + 1, steps)}")
            raise Interrupted(message) from None
        except OSError as e:
            if e.errno in DISK_ERRNOS:
                e.add_note(self._stopped(f"the run stopped after step {step()}"))
            raise
        finally:
            self.close()

    def _stopped(self, what: str) -> str:
        ckpts = self.checkpoints()
        then = (
            f"it continues from the checkpoint of step {_step_of(ckpts[-1])}"
            if ckpts
            else "no checkpoint yet: it starts over from step 0"
        )
        return f"{what}; resume with taskgrad train --resume {self.path} ({then})"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says at which step and how to resume."""


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("_")[1])


def checkpoint_problem(path: Path, step: int) -> str | None:
    """Why the checkpoint directory ``path`` is not a complete checkpoint of ``step`` (None: it
    is): its marker must exist, name the step, and list files that exist with those sizes."""
    marker = path / MARKER
    if not marker.is_file():
        return f"no completion marker ({MARKER})"
    try:
        info = json.loads(marker.read_text())
        files = dict(info["files"])
    except (ValueError, KeyError, TypeError, OSError):
        return f"unreadable completion marker ({MARKER})"
    if info.get("step") != step:
        return f"its marker is of step {info.get('step')!r}"
    if "trainer.pt" not in files:
        return "its marker lists no trainer.pt"
    for name, size in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, its marker says {size}"
    return None
