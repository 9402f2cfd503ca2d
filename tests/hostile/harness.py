"""Run the hostile programs of ``programs/`` as a trainer would, and check from outside that each
one was contained.

Each program is a completion scored by ``score_programs`` in one batch with three correct
completions (siblings that run at the same time, in their own sandboxes), with a preload that
gives it ``ctypes``, ``os``, ``socket``, ``signal``... so that it can make any system call: the
kernel isolation, not Python, is what is tested. Placeholders in a program's text are replaced
first: ``__CANARY__`` (a directory of the trainer, world-writable, holding a world-readable
secret file: only the isolation keeps it out of reach), ``__PORT__`` (a loopback TCP listener,
UDP socket and abstract unix socket of the trainer) and ``__TRAINER_PID__`` (this process).

A program is *contained* when all of these hold:

* it earns reward 0, and the three siblings still earn 1 each;
* the canary directory is unchanged (names, modes, sizes, times, contents);
* no connection or datagram reached the trainer's sockets;
* neither the trainer's secret environment variable nor the canary's secret appears in anything
  the sandbox returned (outputs, stdout, stderr, error), nor does a line with ``ESCAPED`` (the
  programs print one when they observe that an attack worked);
* the trainer is unchanged: CPU affinity, nice value, scheduler, every rlimit, process group,
  not traced; it is alive (this code runs in it), and the batch took at most ``ELAPSED_LIMIT_S``;
* scoring did not raise.

Used in-process by ``test_hostile.py`` and, as a script, by it again as an unprivileged user:
``python harness.py ROOT OUT.jsonl`` (ROOT: the directory holding ``taskgrad``), which writes one
JSON record per program as soon as it is done, so that a driver killed midway names the program.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import resource
import secrets
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROGRAMS = HERE / "programs"
TIMEOUT_S = 1.0
# The hostile program's own timeout, the trainer's startup slack (3 s) and room for a loaded
# machine: a mkdir flood used to cost the trainer 15-46 s of cleanup.
ELAPSED_LIMIT_S = TIMEOUT_S + 6.0
PRELOAD = (
    "math", "time", "os", "posix", "signal", "socket", "select", "resource", "ctypes", "mmap",
    "fcntl", "struct", "threading", "gc", "errno", "builtins", "sys",
)  # fmt: skip
INPUTS = [[2], [5], [-1]]
OUTPUTS = [7, 16, -2]  # f(x) = 3x + 1
GOOD = (
    "```python\ndef f(x):\n    return x * 3 + 1\n```",
    "```python\nimport time\n\ntime.sleep(0.2)\n\n\ndef f(x):\n    return 3 * x + 1\n```",
    "```python\nimport time\n\n\ndef f(x):\n    time.sleep(0.07)\n    return x + x + x + 1\n```",
)
SECRET_ENV = "TASKGRAD_HOSTILE_SECRET"
RLIMITS = [name for name in dir(resource) if name.startswith("RLIMIT_")]


@dataclass(frozen=True)
class Program:
    name: str
    kind: str  # the "# class:" header
    expect: str  # the "# expect:" header
    text: str


def load_programs() -> list[Program]:
    programs = []
    for path in sorted(PROGRAMS.glob("*.py")):
        text = path.read_text()
        headers = dict(re.findall(r"^# (class|expect): (.+)$", text, flags=re.MULTILINE))
        if set(headers) != {"class", "expect"} or "def f(" not in text:
            raise ValueError(f"{path}: needs '# class:' and '# expect:' headers and a def f(")
        programs.append(Program(path.stem, headers["class"], headers["expect"], text))
    return programs


class Environment:
    """The trainer's side: canary directory, sockets, secret environment variable."""

    def __init__(self) -> None:
        self.secret = "env-secret-" + secrets.token_hex(8)
        self.file_secret = "file-secret-" + secrets.token_hex(8)
        self.hits: list[str] = []
        self._closing = False

    @contextlib.contextmanager
    def active(self) -> Iterator[Environment]:
        os.environ[SECRET_ENV] = self.secret
        self.canary = tempfile.mkdtemp(prefix="taskgrad-canary-", dir="/tmp")
        try:
            # World-writable and world-readable on purpose: file permissions must not be what
            # keeps a program out (as root the sandbox's uid is not root; unprivileged it is
            # the trainer's own uid), so only the isolation does.
            os.chmod(self.canary, 0o777)
            secret = Path(self.canary, "secret.txt")
            secret.write_text(self.file_secret)
            secret.chmod(0o666)
            Path(self.canary, "sub").mkdir(mode=0o777)
            with self._sockets():
                yield self
        finally:
            os.environ.pop(SECRET_ENV, None)
            _remove(self.canary)

    @contextlib.contextmanager
    def _sockets(self) -> Iterator[None]:
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(16)
        self.port = tcp.getsockname()[1]
        listeners = [tcp]
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", self.port))
        listeners.append(udp)
        with contextlib.suppress(OSError):  # no IPv6 on this machine: nothing to listen on
            tcp6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            tcp6.bind(("::1", self.port))
            tcp6.listen(16)
            listeners.append(tcp6)
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(f"\0taskgrad-hostile-{self.port}")
        unix.listen(16)
        listeners.append(unix)
        threads = [threading.Thread(target=self._listen, args=(s,), daemon=True) for s in listeners]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            self._closing = True
            for s in listeners:
                s.close()

    def _listen(self, s: socket.socket) -> None:
        s.settimeout(0.1)
        while not self._closing:
            try:
                if s.type == socket.SOCK_DGRAM:
                    data, peer = s.recvfrom(64)
                    self.hits.append(f"datagram from {peer}: {data!r}")
                else:
                    conn, peer = s.accept()
                    self.hits.append(f"connection from {peer!r}")
                    conn.close()
            except (TimeoutError, OSError):
                continue

    def canary_state(self) -> list[tuple[Any, ...]]:
        state = []
        for dirpath, dirnames, filenames in os.walk(self.canary):
            for name in sorted(dirnames + filenames):
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                digest = ""
                if os.path.isfile(path) and not os.path.islink(path):
                    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                rel = os.path.relpath(path, self.canary)
                state.append((rel, st.st_mode, st.st_size, st.st_mtime_ns, digest))
        top = os.lstat(self.canary)
        return [(".", top.st_mode, top.st_mtime_ns), *sorted(state)]


def trainer_state() -> dict[str, Any]:
    with open("/proc/self/status") as fh:
        tracer = next((line.split()[1] for line in fh if line.startswith("TracerPid:")), "?")
    return {
        "alive": True,
        "affinity": sorted(os.sched_getaffinity(0)),
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "scheduler": os.sched_getscheduler(0),
        "pgid": os.getpgrp(),
        "tracer_pid": tracer,
        "rlimits": {name: resource.getrlimit(getattr(resource, name)) for name in RLIMITS},
    }


@contextlib.contextmanager
def recording_results(into: list) -> Iterator[None]:
    """Let score_programs score as usual, keeping the SandboxResults it saw for evidence."""
    from taskgrad.tasks import code

    real = code.run_many

    def recording(jobs: Any, **options: Any) -> Any:
        results = real(jobs, **options)
        into.extend(zip(jobs, results, strict=True))
        return results

    code.run_many = recording
    try:
        yield
    finally:
        code.run_many = real


def run_program(program: Program, env: Environment) -> dict[str, Any]:
    from taskgrad.tasks.base import Sample
    from taskgrad.tasks.code import score_programs

    text = (
        program.text.replace("__CANARY__", env.canary)
        .replace("__PORT__", str(env.port))
        .replace("__TRAINER_PID__", str(os.getpid()))
    )
    meta = {"entry": "f", "inputs": INPUTS, "outputs": OUTPUTS, "asserts": []}
    sample = Sample("code", "f(x): mul 3 add 1; f(2)=7:", "x*3+1", meta)
    completions = ["```python\n" + text + "```", *GOOD]
    seen: list = []
    before, canary_before, hits_before = trainer_state(), env.canary_state(), len(env.hits)
    start = time.monotonic()
    error, rewards = "", []
    try:
        with recording_results(seen):
            rewards = [
                r.value
                for r in score_programs(
                    [sample] * len(completions),
                    completions,
                    workers=len(completions),
                    timeout_s=TIMEOUT_S,
                    preload=PRELOAD,
                )
            ]
    except Exception as exc:  # recorded: scoring must never raise for a program
        error = f"{type(exc).__name__}: {exc}"
    elapsed = time.monotonic() - start
    time.sleep(0.05)  # let the listener threads record a late connection
    after, canary_after = trainer_state(), env.canary_state()
    hostile = next((r for job, r in seen if job.program.strip() == text.strip()), None)
    evidence = repr(hostile) if hostile is not None else ""
    record: dict[str, Any] = {
        "name": program.name,
        "class": program.kind,
        "expect": program.expect,
        "user": "root" if os.geteuid() == 0 else f"uid {os.geteuid()}",
        "score_error": error,
        "hostile_reward": rewards[0] if rewards else None,
        "sibling_rewards": rewards[1:],
        "elapsed_s": round(elapsed, 3),
        "trainer_changed": {k: [before[k], after[k]] for k in before if before[k] != after[k]},
        "canary_changed": canary_before != canary_after,
        "network_hits": env.hits[hits_before:],
        "secret_leaked": env.secret in evidence or env.file_secret in evidence,
        "escape_claims": re.findall(r"ESCAPED[^\\\n'\"]{0,80}", evidence),
        "sandbox_error": hostile.error if hostile is not None else "(no result recorded)",
        "hostile_outputs": repr(hostile.result)[:300] if hostile is not None else "",
    }
    record["failures"] = failures(record)
    record["contained"] = not record["failures"]
    return record


def failures(record: dict[str, Any]) -> list[str]:
    """What was not contained, one short phrase each (empty: contained)."""
    found = []
    if record["score_error"]:
        found.append(f"scoring raised {record['score_error']}")
    if record["hostile_reward"] != 0.0:
        found.append(f"hostile reward {record['hostile_reward']}")
    if record["sibling_rewards"] != [1.0] * len(GOOD):
        found.append(f"sibling rewards {record['sibling_rewards']}")
    if record["elapsed_s"] > ELAPSED_LIMIT_S:
        found.append(f"batch took {record['elapsed_s']} s")
    for key, label in (
        ("trainer_changed", "trainer changed"),
        ("canary_changed", "canary changed"),
        ("network_hits", "network reached"),
        ("secret_leaked", "secret leaked"),
        ("escape_claims", "program reports"),
    ):
        if record[key]:
            found.append(f"{label}: {record[key]}")
    return found


def run_all(names: list[str] | None = None) -> Iterator[dict[str, Any]]:
    programs = [p for p in load_programs() if names is None or p.name in names]
    env = Environment()
    with env.active():
        for program in programs:
            yield run_program(program, env)


def _remove(path: str) -> None:
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(dirpath, name), 0o700)
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str]) -> None:
    root, out = argv[0], argv[1]
    sys.path.insert(0, root)
    with open(out, "w") as fh:
        for record in run_all(argv[2:] or None):
            fh.write(json.dumps(record) + "\n")
            fh.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
