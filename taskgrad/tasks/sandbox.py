"""Run untrusted Python (model completions) behind a kernel isolation boundary.

``run_python(program, inputs=[[2], [5]])`` executes ``program`` in a fresh interpreter, calls its
``f`` on each input and returns what the calls returned, as plain data; ``outputs_match`` then
compares them with the expected outputs *here*, in the trainer. Nothing the program prints,
exits with or writes can fake a pass, and nothing it does raises in the caller, hangs it, slows
it beyond the timeout, or touches its files, processes or memory.

Threat model: the program is hostile and may make any system call (it may reach ``ctypes``).
The boundary is therefore made of kernel mechanisms, built by the trusted ``sandbox_runner.py``
before the program runs (details there and in docs/sandbox.md):

* its own user namespace (as root, first a distinct unprivileged uid per concurrent sandbox),
  with nested user namespaces forbidden, no capabilities, ``NO_NEW_PRIVS``;
* its own PID namespace (it cannot see, signal, trace, renice or re-limit the trainer or any
  other sandbox; its supervisor is the namespace's init, immune to it), network namespace
  (no interface up), IPC namespace (SysV IPC capped to zero) and UTS namespace;
* its own mount namespace whose root is a private tmpfs limited in size and inodes: no host
  file, no ``/proc``, no ``/dev``; the kernel frees it with the namespace, so there is no
  directory for the trainer to clean up, however the program mangled it;
* rlimits: CPU, address space, file size (also bounds stdout/stderr, which go to anonymous
  memory files of which only the first ``max_output_bytes`` are read), open files, no new
  processes or threads, no core dumps, no locked memory;
* a wall clock: the supervisor kills the program at ``timeout_s``; the trainer kills the whole
  process group (and with it the namespace) as a backstop.

Checks happen only here: the sandbox reports each call's return value (or error name) as a
Python literal of plain types, parsed with ``ast.literal_eval`` (never ``eval``) and compared
with exact ``type() is`` tests, so an object with a lying ``__eq__`` cannot pass; the expected
outputs never enter the sandbox. Assert-style tests of datasets are evaluated here as well
(``sandbox_asserts``), on the values the calls returned.

Where the kernel refuses the isolation, code rewards raise one line saying why and how to allow
it (``isolation.unavailable_message``); ``TASKGRAD_UNSAFE_CODE_EXEC=1`` is the explicit,
logged opt-in to run trusted code without it.
"""

from __future__ import annotations

import ast
import contextlib
import marshal
import math
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from taskgrad.tasks import isolation, sandbox_runner

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_runner.py")
MAX_PROGRAM_CHARS = 100_000  # longer programs are rejected without starting a process
MAX_RESULT_BYTES = sandbox_runner.MAX_RESULT_BYTES
DISK_BYTES = 16 * 2**20  # the program's tmpfs: all its files together
DISK_INODES = 1024  # files, directories, links... on that tmpfs, the root included
# The supervisor enforces ``timeout_s`` from the moment the program starts; the trainer's own
# deadline adds this much for the interpreter's start and the isolation (a loaded machine).
STARTUP_SLACK_S = 3.0
# The seccomp filter is a second layer (see sandbox_runner.py); tests switch it off to check
# that the namespaces, uids and capabilities contain every hostile program on their own.
_USE_SECCOMP = True
CLEANUP_BUDGET_S = 5.0  # unsafe mode only: the longest we spend removing a temporary directory
DEFAULT_PRELOAD = ("math",)
# Modules short solutions commonly import; each costs startup time in every sandbox.
STDLIB_PRELOAD = (
    "__future__",
    "math",
    "itertools",
    "functools",
    "collections",
    "operator",
    "string",
    "heapq",
    "bisect",
    "re",
)


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run did.

    ``ok``: the program ran and each call returned or raised (whatever the values), within the
    time limit, and the report was well formed. ``result`` (None unless ok):
    ``{"outputs": [(ok, value_or_error_name), ...]}``, one pair per input. ``returncode``: the
    program's exit status (negative: killed by that signal). ``error``: why not ok.
    """

    ok: bool
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    result: dict[str, Any] | None
    error: str = ""


@dataclass(frozen=True)
class SandboxJob:
    """One program with the calls to make (``entry(*args)`` for each ``inputs`` item)."""

    program: str
    inputs: tuple[tuple[Any, ...], ...] = ()
    entry: str = "f"


def run_python(
    program: str,
    *,
    inputs: Sequence[Sequence[Any]] = (),
    entry: str = "f",
    timeout_s: float = 2.0,
    memory_mb: int = 256,
    max_output_bytes: int = 64_000,
    preload: Sequence[str] = DEFAULT_PRELOAD,
) -> SandboxResult:
    """Run ``program``, then ``entry(*args)`` for each of ``inputs``, isolated (module doc).

    ``inputs`` must be plain data (None, bool, int, float, str, lists, dicts with str keys).
    Only the modules in ``preload`` can be imported by the program. Never raises for anything
    the program does; raises RuntimeError (one line) if this machine cannot isolate it and
    ``TASKGRAD_UNSAFE_CODE_EXEC=1`` is not set, ValueError for bad arguments."""
    isolate = check_available() == "isolated"
    result = _run(
        program,
        inputs=inputs,
        entry=entry,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        max_output_bytes=max_output_bytes,
        preload=preload,
        isolate=isolate,
    )
    if result.error.startswith("sandbox setup failed"):
        # After a successful probe this is the machine, not the program (e.g. a namespace or
        # process limit reached): say so, since the reward silently becomes 0.
        isolation.log.warning("%s", result.error)
    return result


def run_many(
    jobs: Sequence[SandboxJob], *, workers: int = 4, **options: Any
) -> list[SandboxResult]:
    """``run_python`` for each job, identical jobs once, ``workers`` sandboxes at a time.

    Threads suffice: each worker mostly waits on its subprocess, and spawning needs no
    ``preexec_fn`` (the runner isolates itself), so it is safe from a thread."""
    # repr, not hash: inputs may hold lists. Plain values have a faithful, deterministic repr.
    keys = [(job.program, repr(job.inputs), job.entry) for job in jobs]
    unique = list(dict(zip(keys, jobs, strict=True)).items())

    def one(item: tuple[Any, SandboxJob]) -> SandboxResult:
        job = item[1]
        return run_python(job.program, inputs=job.inputs, entry=job.entry, **options)

    if len(unique) <= 1 or workers <= 1:
        done = [one(item) for item in unique]
    else:
        with ThreadPoolExecutor(max_workers=min(workers, len(unique))) as pool:
            done = list(pool.map(one, unique))
    by_key = {key: result for (key, _), result in zip(unique, done, strict=True)}
    return [by_key[key] for key in keys]


def outputs_match(result: SandboxResult, expected: Sequence[Any]) -> list[bool]:
    """Per expected output: did the call return exactly it? (False everywhere if not ok.)
    ``expected`` may be shorter than the calls made: it is matched against the first ones."""
    outputs = result.result["outputs"] if result.ok and result.result else []
    if len(outputs) < len(expected):
        return [False] * len(expected)
    pairs = zip(outputs[: len(expected)], expected, strict=True)
    return [ok and same_value(value, want) for (ok, value), want in pairs]


def same_value(got: Any, want: Any) -> bool:
    """Equality of plain values with JSON semantics: ints and floats compare by value (so
    ``2.0`` matches ``2``), bools only match bools, lists match element-wise, dicts key-wise."""
    if type(want) is bool or type(got) is bool:
        return type(got) is type(want) and got == want
    if type(want) in (int, float) and type(got) in (int, float):
        return got == want or (
            type(got) is float and type(want) is float and math.isclose(got, want, rel_tol=1e-9)
        )
    if type(want) is list and type(got) is list:
        return len(got) == len(want) and all(map(same_value, got, want))
    if type(want) is dict and type(got) is dict:
        return got.keys() == want.keys() and all(same_value(got[k], want[k]) for k in want)
    return type(got) is type(want) and type(got) in (str, type(None)) and got == want


def is_plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is built only from exact plain types (what may enter or leave)."""
    if depth > 50:
        return False
    t = type(value)
    if value is None or t in (bool, int, float, str):
        return True
    if t in (list, tuple):
        return all(is_plain(item, depth + 1) for item in value)
    if t is dict:
        return all(type(k) is str and is_plain(v, depth + 1) for k, v in value.items())
    return False


def check_available() -> str:
    """``"isolated"`` where the kernel isolation works (checked once per process by running a
    trivial program), ``"unsafe"`` where it does not but ``TASKGRAD_UNSAFE_CODE_EXEC=1`` opts
    in (logged as a warning); otherwise raises RuntimeError with one line saying why and how to
    enable it. Call it at startup to fail before training rather than at the first reward."""
    mode = _MODE.mode
    if mode:
        return mode
    with _MODE.lock:
        if not _MODE.mode:
            _MODE.mode = _decide_mode()
        return _MODE.mode


# -- implementation ----------------------------------------------------------------------------


class _Mode:
    mode = ""
    lock = threading.Lock()


_MODE = _Mode()
_PROBE = "def f(x):\n    return x + 1\n"


def _decide_mode() -> str:
    opt_in = isolation.unsafe_opt_in()  # a malformed value raises here, whatever the kernel
    reason = _isolation_probe()
    if not reason:
        return "isolated"
    if not opt_in:
        raise RuntimeError(isolation.unavailable_message(reason))
    isolation.warn_unsafe(reason)
    result = _probe_run(isolate=False)
    if not (result.ok and outputs_match(result, [2]) == [True]):
        raise RuntimeError(f"code sandbox does not work even without isolation: {_why(result)}")
    return "unsafe"


def _isolation_probe() -> str:
    """Empty if a trivial program runs isolated and returns the right value, else why not."""
    result = _probe_run(isolate=True)
    if result.ok and outputs_match(result, [2]) == [True]:
        return ""
    return _why(result)


def _probe_run(*, isolate: bool) -> SandboxResult:
    return _run(
        _PROBE,
        inputs=[[1]],
        entry="f",
        timeout_s=30.0,
        memory_mb=256,
        max_output_bytes=4096,
        preload=DEFAULT_PRELOAD,
        isolate=isolate,
    )


def _why(result: SandboxResult) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    tail = f"; last stderr line: {lines[-1].strip()[:300]}" if lines else ""
    return (result.error or "wrong output") + tail


def _run(
    program: str,
    *,
    inputs: Sequence[Sequence[Any]],
    entry: str,
    timeout_s: float,
    memory_mb: int,
    max_output_bytes: int,
    preload: Sequence[str],
    isolate: bool,
) -> SandboxResult:
    if type(program) is not str or len(program) > MAX_PROGRAM_CHARS:
        return _failed("program is not a str or is too long")
    if type(entry) is not str or not entry.isidentifier() or not is_plain(list(inputs)):
        raise ValueError("sandbox: entry must be an identifier and inputs plain data")
    if not all(type(name) is str and name.replace(".", "_").isidentifier() for name in preload):
        raise ValueError(f"sandbox: preload must be module names, got {list(preload)!r}")
    if not timeout_s > 0 or memory_mb < 32:
        raise ValueError("sandbox: timeout_s must be > 0 and memory_mb >= 32")
    uid = isolation.UID_SLOTS.acquire() if os.geteuid() == 0 else None
    workdir = None
    try:
        if not isolate:
            workdir = os.path.realpath(tempfile.mkdtemp(prefix="taskgrad-sandbox-"))
            if uid is not None:
                try:
                    os.chown(workdir, uid, uid)
                except OSError:  # root of a user namespace that does not map the slot uids:
                    isolation.UID_SLOTS.release(uid)  # unsafe mode runs as the trainer then
                    uid = None
        job = _make_job(
            program, inputs, entry, timeout_s, memory_mb, max_output_bytes, preload, isolate, uid,
            workdir,
        )  # fmt: skip
        return _spawn(job, len(job["inputs"]), timeout_s, max_output_bytes)
    finally:
        if uid is not None:
            isolation.UID_SLOTS.release(uid)  # its processes are dead: _spawn killed the group
        if workdir is not None:
            _remove_tree(workdir, time.monotonic() + CLEANUP_BUDGET_S)


def _make_job(
    program: str,
    inputs: Sequence[Sequence[Any]],
    entry: str,
    timeout_s: float,
    memory_mb: int,
    max_output_bytes: int,
    preload: Sequence[str],
    isolate: bool,
    uid: int | None,
    workdir: str | None,
) -> dict[str, Any]:
    """What the runner gets (see sandbox_runner.py), as plain data for ``marshal``."""
    return {
        "program": program,
        "inputs": [list(args) for args in inputs],
        "entry": entry,
        "preload": list(preload),
        "uid": uid,
        "isolate": isolate,
        "seccomp": _USE_SECCOMP,
        "workdir": workdir,
        "timeout_s": float(timeout_s),
        "disk_bytes": DISK_BYTES,
        "disk_inodes": DISK_INODES,
        "limits": {
            "cpu_s": max(1, math.ceil(timeout_s)),
            "memory_bytes": memory_mb * 2**20,
            # stdout, stderr and any file the program writes; past it, writes fail
            "file_bytes": max(2**20, 2 * max_output_bytes),
            "open_files": 32,
        },
    }


def _spawn(job: dict, n_calls: int, timeout_s: float, max_output_bytes: int) -> SandboxResult:
    fds: list[int] = []
    proc = None
    try:
        job_fd, out_fd, err_fd = (_anonymous_file(name, fds) for name in ("job", "out", "err"))
        os.write(job_fd, marshal.dumps(job))
        os.lseek(job_fd, 0, os.SEEK_SET)
        report_r, report_w = os.pipe()
        fds += [report_r, report_w]
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", RUNNER, str(report_w)],
                cwd="/",
                env={},
                stdin=job_fd,
                stdout=out_fd,
                stderr=err_fd,
                pass_fds=(report_w,),
                start_new_session=True,  # its own process group, killed as a whole below
                close_fds=True,
            )
        except OSError as exc:
            return _failed(f"could not start the sandbox: {exc}")
        finally:
            fds.remove(report_w)
            os.close(report_w)  # the runner's copy is the only one left: EOF when it is done
        deadline = time.monotonic() + timeout_s + STARTUP_SLACK_S
        raw, complete = _read_report(report_r, deadline)
        _kill_group(proc.pid)  # also when it reported: anything left behind goes too
        returncode = proc.wait()
        proc = None
        stdout, stderr = _head(out_fd, max_output_bytes), _head(err_fd, max_output_bytes)
    finally:
        if proc is not None:  # interrupted (KeyboardInterrupt...): leave nothing running
            _kill_group(proc.pid)
            proc.wait()
        for fd in fds:
            os.close(fd)
    return _result(raw, complete, n_calls, timeout_s, stdout, stderr, returncode)


def _anonymous_file(name: str, opened: list[int]) -> int:
    """A file in memory (no path anyone could open or swap), closed on exec unless passed."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create(f"taskgrad-sandbox-{name}", os.MFD_CLOEXEC)
    else:  # not Linux: an unlinked temporary file
        fd, path = tempfile.mkstemp(prefix="taskgrad-sandbox-")
        os.unlink(path)
    opened.append(fd)
    return fd


def _read_report(fd: int, deadline: float) -> tuple[bytes, bool]:
    """What the runner reports, until EOF or the deadline; (bytes, whether EOF was reached)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks, size = [], 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b"".join(chunks), False
        if not poller.poll(remaining * 1000):
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_RESULT_BYTES + 100:  # the supervisor caps it: this is not it talking
            return b"", True


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pgid, signal.SIGKILL)


def _head(fd: int, limit: int) -> str:
    return os.pread(fd, limit, 0).decode("utf-8", errors="replace")


def _failed(reason: str, **fields: Any) -> SandboxResult:
    values = {"returncode": None, "stdout": "", "stderr": "", "timed_out": False}
    values.update(fields)
    return SandboxResult(ok=False, result=None, error=reason, **values)


def _result(
    raw: bytes,
    complete: bool,
    n_calls: int,
    timeout_s: float,
    stdout: str,
    stderr: str,
    launcher_code: int,
) -> SandboxResult:
    """Turn the runner's report into a SandboxResult. The header comes from the trusted
    supervisor; the lines after it from the program's process, so they are parsed as
    untrusted data: anything unexpected makes the run fail, never pass."""
    streams = {"stdout": stdout, "stderr": stderr}
    if raw.startswith(b"E "):  # written by the launcher before any untrusted code ran
        reason = raw[2:].split(b"\n", 1)[0].decode("ascii", "replace")
        return _failed(f"sandbox setup failed: {reason}", **streams)
    header, _, data = raw.partition(b"\n")
    fields = header.split(b" ")
    if not complete or len(fields) != 5 or fields[0] != b"R":
        if not complete:
            return _failed(f"timed out after {timeout_s:g} s", timed_out=True, **streams)
        return _failed(
            f"no report (the sandbox died, launcher exit status {launcher_code})", **streams
        )
    try:  # the supervisor wrote it; parsed defensively all the same
        status, timed_out, overflow, size = (int(x) for x in fields[1:])
        returncode = os.waitstatus_to_exitcode(status)
    except ValueError:
        return _failed("garbled report header", **streams)
    streams["returncode"] = returncode
    if timed_out:
        return _failed(f"timed out after {timeout_s:g} s", timed_out=True, **streams)
    if overflow or size != len(data):
        return _failed("garbled report (too large)", **streams)
    lines = data.split(b"\n")
    if lines[0].startswith(b"!setup "):  # the worker, before it ran any program code
        reason = lines[0][7:200].decode("ascii", "replace")
        return _failed(f"sandbox setup failed in the worker: {reason}", **streams)
    # A last line without its newline was cut off by the program's death: not an outcome.
    outcomes = [_literal(line) for line in lines[:-1]]
    if not outcomes:
        return _failed(_died("before reporting", returncode), **streams)
    first = outcomes[0]
    if type(first) is not str:
        return _failed("garbled report", **streams)
    if first:
        return _failed(f"program raised {first[:100]}", **streams)
    outputs = outcomes[1:]
    if not all(_valid_output(item) for item in outputs) or len(outputs) > n_calls:
        return _failed("garbled report", **streams)
    if len(outputs) < n_calls:
        return _failed(_died(f"after {len(outputs)} of {n_calls} calls", returncode), **streams)
    return SandboxResult(True, returncode, stdout, stderr, False, {"outputs": outputs})


_GARBLED = object()


def _literal(line: bytes) -> Any:
    try:
        return ast.literal_eval(line.decode("ascii"))
    except Exception:  # SyntaxError, ValueError, RecursionError, MemoryError, UnicodeError...
        return _GARBLED


def _valid_output(item: Any) -> bool:
    if type(item) is not tuple or len(item) != 2 or type(item[0]) is not bool:
        return False
    return is_plain(item[1]) if item[0] else type(item[1]) is str


def _died(when: str, returncode: int) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else ""
        how = f"killed by signal {-returncode} {name} (e.g. a resource limit)"
    else:
        how = f"exit status {returncode}"
    return f"the program stopped {when}: {how}"


def _remove_tree(path: str, deadline: float) -> None:
    """Unsafe mode only: remove the program's temporary directory. Never raises, is bounded by
    ``deadline`` (what is left stays, and is logged), and copes with what a program can do to a
    directory: nest it deeper than PATH_MAX or Python's recursion limit, make parts of it
    unreadable, fill it with links. ``chmod -R`` and ``rm -rf`` walk it with descriptors, never
    follow links, and run in a child: no recursion here, and no ``chdir`` in this process."""
    try:
        for command in (["chmod", "-R", "u+rwx", "--", path], ["rm", "-rf", "--", path]):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=remaining,
                check=False,
            )
    except (OSError, subprocess.SubprocessError):  # no coreutils, or out of time
        pass
    with contextlib.suppress(OSError):
        if os.path.lexists(path):
            isolation.log.warning("sandbox: could not remove %s in time; left in place", path)
