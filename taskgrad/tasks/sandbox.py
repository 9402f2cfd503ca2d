"""Run untrusted Python (model completions) in a throw-away, resource-limited subprocess.

``run_python(program, inputs=[[2], [5]])`` executes ``program`` in a fresh interpreter, calls its
``f`` on each input and returns the outputs; ``outputs_match`` then compares them with expected
outputs *here*, in the trusted parent, so nothing the program prints, exits with or writes can
fake a pass. Nothing the program does raises in the caller, hangs it, or fills its memory.

Layers, each stopping the common accidents alone (trusted runner: ``sandbox_runner.py``):

* process: ``python -I -S -B`` (isolated mode, no site: ~15 ms to start), its own session so
  the whole process group is SIGKILLed at the wall-clock timeout, empty environment, stdin
  ``/dev/null``, cwd a fresh temporary directory removed afterwards;
* kernel limits: CPU seconds, address space, file size (bounds stdout/stderr too, which go to
  files of which only the first ``max_output_bytes`` are read back), open files, no new
  processes or threads (``RLIMIT_NPROC`` 0), no core dumps;
* namespaces (Linux): as root, a new network namespace (no interface is up, so no network),
  ``chroot`` into the temporary directory and a drop to uid/gid 65534 (nobody); as another user,
  network namespace and chroot through a user namespace where the kernel allows one. Best
  effort: where refused, the audit hook below still applies;
* an audit hook (``sys.addaudithook``) installed before the program runs: denies process
  creation and signals, sockets, ctypes, imports of anything not preloaded, frame/code/gc
  introspection, and file access outside the temporary directory. Audit hooks are not a
  security boundary against a determined attacker, which is why the kernel layers come first.

Outputs cross back only as a Python literal of plain types (``ast.literal_eval``, never
``eval``), checked with exact ``type() is`` tests on both sides, so an object with a lying
``__eq__`` cannot pass.
"""

from __future__ import annotations

import ast
import contextlib
import marshal
import math
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_runner.py")
NOBODY = 65534
# Network namespace + chroot where the kernel allows them; tests switch this off to check that
# the audit hook alone keeps a program inside its directory.
_USE_NAMESPACES = True
MAX_PROGRAM_CHARS = 100_000  # longer programs are rejected without starting a process
MAX_RESULT_BYTES = 1_000_000
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

    ``ok``: the program ran to the end of its calls and checks (whatever their outcome) and the
    runner reported back. ``result`` (None unless ok): ``{"outputs": [(ok, value_or_error_name),
    ...] per input, "checks": [(ok, error_name), ...] per assert}``. ``error``: why not ok.
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
    """One program with the calls (``entry(*args)`` for each ``inputs`` item) and the assert
    statements to run after it."""

    program: str
    inputs: tuple[tuple[Any, ...], ...] = ()
    entry: str = "f"
    asserts: tuple[str, ...] = ()


def run_python(
    program: str,
    *,
    inputs: Sequence[Sequence[Any]] = (),
    entry: str = "f",
    asserts: Sequence[str] = (),
    timeout_s: float = 2.0,
    memory_mb: int = 256,
    max_output_bytes: int = 64_000,
    preload: Sequence[str] = DEFAULT_PRELOAD,
) -> SandboxResult:
    """Run ``program``, then ``entry(*args)`` for each of ``inputs`` and each assert statement.

    ``inputs`` must be plain data (None, bool, int, float, str, lists, dicts with str keys).
    Only the modules in ``preload`` can be imported by the program. Never raises for anything
    the program does; raises RuntimeError if this machine cannot run the sandbox at all.
    """
    if not _SELF_TEST.passed:
        _self_test()
    return _run(
        program,
        inputs=inputs,
        entry=entry,
        asserts=asserts,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        max_output_bytes=max_output_bytes,
        preload=preload,
    )


def run_many(
    jobs: Sequence[SandboxJob], *, workers: int = 4, **options: Any
) -> list[SandboxResult]:
    """``run_python`` for each job, identical jobs once, ``workers`` sandboxes at a time.

    Threads suffice: each worker mostly waits on its subprocess, and spawning needs no
    ``preexec_fn`` (see sandbox_runner.py), so it is safe from a thread."""
    # repr, not hash: inputs may hold lists. Plain values have a faithful, deterministic repr.
    keys = [(job.program, repr(job.inputs), job.entry, job.asserts) for job in jobs]
    unique = list(dict(zip(keys, jobs, strict=True)).items())

    def one(item: tuple[Any, SandboxJob]) -> SandboxResult:
        job = item[1]
        return run_python(
            job.program, inputs=job.inputs, entry=job.entry, asserts=job.asserts, **options
        )

    if len(unique) <= 1 or workers <= 1:
        done = [one(item) for item in unique]
    else:
        with ThreadPoolExecutor(max_workers=min(workers, len(unique))) as pool:
            done = list(pool.map(one, unique))
    by_key = {key: result for (key, _), result in zip(unique, done, strict=True)}
    return [by_key[key] for key in keys]


def outputs_match(result: SandboxResult, expected: Sequence[Any]) -> list[bool]:
    """Per expected output: did the call return exactly it? (False everywhere if not ok.)"""
    outputs = result.result["outputs"] if result.ok and result.result else []
    if len(outputs) != len(expected):
        return [False] * len(expected)
    return [
        ok and same_value(value, want) for (ok, value), want in zip(outputs, expected, strict=True)
    ]


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


# -- implementation ----------------------------------------------------------------------------


def _run(
    program: str,
    *,
    inputs: Sequence[Sequence[Any]],
    entry: str,
    asserts: Sequence[str],
    timeout_s: float,
    memory_mb: int,
    max_output_bytes: int,
    preload: Sequence[str],
) -> SandboxResult:
    if type(program) is not str or len(program) > MAX_PROGRAM_CHARS:
        return _refused("program is not a str or is too long")
    if not entry.isidentifier() or not is_plain(list(inputs)):
        raise ValueError("sandbox: entry must be an identifier and inputs plain data")
    job = {
        "program": program,
        "inputs": [list(args) for args in inputs],
        "entry": entry,
        "asserts": list(asserts),
        "preload": list(preload),
        "as_root": os.geteuid() == 0,
        "namespaces": _USE_NAMESPACES,
        "max_write_files": 16,
        "limits": {
            "cpu_s": max(1, math.ceil(timeout_s)),
            "memory_bytes": memory_mb * 2**20,
            # stdout, stderr and any file the program writes; past it the write kills the process
            "file_bytes": max(2**20, 2 * max_output_bytes),
            "open_files": 32,
        },
    }
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="taskgrad-sandbox-"))
    try:
        with open(os.path.join(workdir, "job.marshal"), "wb") as fh:
            marshal.dump(job, fh)
        if job["as_root"]:
            os.chown(workdir, NOBODY, NOBODY)  # the program runs as nobody, in this directory
        # The parent keeps its own handles: the program may unlink or replace these paths, but
        # what we read back is what it wrote to the descriptors it was given.
        with (
            open(os.path.join(workdir, "stdout.txt"), "w+b") as out,
            open(os.path.join(workdir, "stderr.txt"), "w+b") as err,
        ):
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", RUNNER],
                cwd=workdir,
                env={},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group, killed as a whole below
                close_fds=True,
            )
            exited = _wait(proc, timeout_s)
            _kill_group(proc.pid)  # also when it exited: anything it left behind goes too
            returncode = proc.wait()
            stdout, stderr = _head(out, max_output_bytes), _head(err, max_output_bytes)
        result, error = _read_result(os.path.join(workdir, "result.txt"))
    finally:
        _remove_tree(workdir)
    if not exited:
        error = f"timed out after {timeout_s:g} s"
    elif result is None and returncode != 0:
        error = f"{error} (exit status {returncode})"
    ok = exited and result is not None and not result.get("error")
    if result is not None and result.get("error"):
        error = f"program raised {result['error']}"
    return SandboxResult(
        ok=ok,
        returncode=returncode,
        stdout=stdout,
        stderr=stderr,
        timed_out=not exited,
        result=result if ok else None,
        error="" if ok else error,
    )


def _refused(reason: str) -> SandboxResult:
    return SandboxResult(False, None, "", "", False, None, reason)


def _wait(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for the child to exit without reaping it (so its pid, which is also its process
    group id, cannot be reused before ``_kill_group``); False on timeout."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd (old kernel, not Linux): a reaping wait
        try:
            proc.wait(timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(timeout_s * 1000))
    finally:
        os.close(pidfd)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pgid, signal.SIGKILL)


def _head(fh: Any, limit: int) -> str:
    fh.seek(0)
    return fh.read(limit).decode("utf-8", errors="replace")


def _read_result(path: str) -> tuple[dict[str, Any] | None, str]:
    """Parse and validate the runner's result file; anything unexpected is a garbled result.

    Opened without following links or blocking (the program could have swapped the path for a
    symlink or a FIFO), read up to a bound, and parsed as a literal, never evaluated."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None, "no result (the process died or exited before reporting)"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, "garbled result"
        raw = os.read(fd, MAX_RESULT_BYTES + 1)
    finally:
        os.close(fd)
    if not raw:
        return None, "no result (the process died or exited before reporting)"
    if len(raw) > MAX_RESULT_BYTES:
        return None, "garbled result (too large)"
    try:
        data = ast.literal_eval(raw.decode("ascii"))
    except Exception:  # SyntaxError, ValueError, RecursionError, MemoryError, UnicodeError...
        return None, "garbled result"
    if _valid_result(data):
        return data, ""
    return None, "garbled result"


def _valid_result(data: Any) -> bool:
    if type(data) is not dict or type(data.get("error")) is not str:
        return False
    if data["error"]:
        return set(data) == {"error"}
    if set(data) != {"error", "outputs", "checks"}:
        return False
    outputs, checks = data["outputs"], data["checks"]
    if type(outputs) is not list or type(checks) is not list:
        return False
    pairs = [*outputs, *checks]
    if not all(type(p) is tuple and len(p) == 2 and type(p[0]) is bool for p in pairs):
        return False
    return all(is_plain(value) for _, value in outputs) and all(
        type(msg) is str for _, msg in checks
    )


def _remove_tree(path: str) -> None:
    """Remove the directory even if the program made parts of it unreadable (non-root case)."""

    def make_writable_and_retry(func: Any, failed: str, _exc: Any) -> None:
        try:
            parent = os.path.dirname(failed)
            for p in (parent, failed):
                if os.path.isdir(p) and not os.path.islink(p):
                    os.chmod(p, 0o700)
            func(failed)
        except OSError:
            pass

    shutil.rmtree(path, onerror=make_writable_and_retry)


class _SelfTest:
    passed = False
    lock = threading.Lock()


_SELF_TEST = _SelfTest()


def _self_test() -> None:
    """Once per process: a trivial program must run, else the sandbox is broken on this
    machine (e.g. root without CAP_SETUID) and every reward would silently be 0."""
    with _SELF_TEST.lock:
        if _SELF_TEST.passed:
            return
        result = _run(
            "def f(x):\n    return x + 1\n",
            inputs=[[1]],
            entry="f",
            asserts=["assert f(1) == 2"],
            timeout_s=30.0,
            memory_mb=256,
            max_output_bytes=4096,
            preload=DEFAULT_PRELOAD,
        )
        if not (result.ok and outputs_match(result, [2]) == [True]):
            raise RuntimeError(
                f"the code sandbox does not work on this machine: {result.error}; "
                f"stderr: {result.stderr[-2000:]!r}"
            )
        _SELF_TEST.passed = True
