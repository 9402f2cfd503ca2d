"""The code sandbox against hostile programs: each is contained, and a normal run works after.

Escape attempts run twice: with the kernel layers (namespaces, chroot, nobody) and with only
the audit hook (``_USE_NAMESPACES = False``: what a machine without namespaces gets).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from taskgrad.tasks import sandbox
from taskgrad.tasks.sandbox import (
    SandboxJob,
    outputs_match,
    run_many,
    run_python,
    same_value,
)

GOOD = "def f(x):\n    return x * 3 + 1\n"


def assert_still_works() -> None:
    result = run_python(GOOD, inputs=[[2], [-1]])
    assert result.ok, result
    assert outputs_match(result, [7, -2]) == [True, True]


@pytest.fixture(params=[True, False], ids=["namespaces", "hook-only"])
def isolation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(sandbox, "_USE_NAMESPACES", request.param)
    return request.param


def nobody_processes() -> list[int]:
    """Pids of processes owned by uid 65534 (what the sandbox runs as under root)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as fh:
                uid_line = next(line for line in fh if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if uid_line.split()[1] == "65534":
            pids.append(int(entry))
    return pids


# -- normal operation ---------------------------------------------------------------------------
def test_runs_program_and_returns_plain_outputs() -> None:
    program = "def f(x, y=1):\n    return [x, (x, 'a'), {'k': x / 2}, None, x > 0]\n"
    result = run_python(program, inputs=[[4], [-2, 5]])
    assert result.ok and not result.timed_out and result.returncode == 0
    outputs = [value for _, value in result.result["outputs"]]
    # tuples come back as lists (JSON semantics)
    assert outputs == [
        [4, [4, "a"], {"k": 2.0}, None, True],
        [-2, [-2, "a"], {"k": -1.0}, None, False],
    ]


def test_errors_are_per_call_and_asserts_are_checked() -> None:
    program = "def f(x):\n    return 10 // x\n"
    result = run_python(
        program, inputs=[[2], [0]], asserts=["assert f(5) == 2", "assert f(5) == 3"]
    )
    assert result.ok
    assert result.result["outputs"] == [(True, 5), (False, "ZeroDivisionError")]
    assert result.result["checks"] == [(True, ""), (False, "AssertionError")]
    assert outputs_match(result, [5, 0]) == [True, False]


def test_program_errors_are_reported_not_raised() -> None:
    for program, error in [
        ("def f(x) return", "SyntaxError"),
        ("raise SystemExit(3)", "SystemExit"),
    ]:
        result = run_python(program, inputs=[[1]])
        assert not result.ok and error in result.error and result.result is None
    assert not run_python("x" * 200_000).ok  # refused without starting a process


def test_only_preloaded_modules_import() -> None:
    assert run_python("import math\ndef f(x):\n    return math.isqrt(x)", inputs=[[17]]).ok
    blocked = run_python("import json")
    assert not blocked.ok and "PermissionError" in blocked.error
    allowed = run_python("import json", preload=("json",))
    assert allowed.ok


def test_same_value_is_strict_about_types() -> None:
    assert same_value(2.0, 2) and same_value([1, [2]], [1, [2]])
    assert not same_value(True, 1) and not same_value(1, True)
    assert not same_value("1", 1) and not same_value([1], (1,)) and not same_value(None, 0)


# -- hostile programs ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "program",
    [
        "while True:\n    pass\n",
        "import time\ntime.sleep(60)\n",
        "def f(x):\n    while True: pass\n",
    ],
    ids=["cpu-loop", "sleep", "loop-in-call"],
)
def test_timeout_kills_the_program(program: str) -> None:
    start = time.monotonic()
    result = run_python(program, inputs=[[1]], timeout_s=0.5)
    assert time.monotonic() - start < 3.0
    assert result.timed_out and not result.ok and result.result is None
    assert_still_works()


@pytest.mark.parametrize(
    "program",
    [
        "import os\nwhile True:\n    os.fork()\n",
        "import posix\nwhile True:\n    posix.fork()\n",
        "import _thread\nwhile True:\n    _thread.start_new_thread(lambda: None, ())\n",
        "import posix\nposix.system('sleep 30 &')\n",
    ],
    ids=["os.fork", "posix.fork", "threads", "system"],
)
def test_fork_bomb_is_contained(program: str) -> None:
    result = run_python(program, inputs=[[1]], timeout_s=1.0)
    assert not result.ok
    if os.geteuid() == 0:
        assert nobody_processes() == []  # nothing it started survives it
    assert_still_works()


@pytest.mark.parametrize(
    "program",
    ["x = bytearray(2**33)\n", "xs = []\nwhile True:\n    xs.append(' ' * 10**7)\n"],
    ids=["one-block", "growing"],
)
def test_memory_hog_is_contained(program: str) -> None:
    start = time.monotonic()
    result = run_python(program, memory_mb=128, timeout_s=2.0)
    assert not result.ok and time.monotonic() - start < 5.0
    assert_still_works()


def test_writing_outside_its_directory_fails(isolation: bool) -> None:
    target = f"/tmp/escape_{uuid.uuid4().hex}"
    attempts = [
        f"open({target!r}, 'w').write('x')",
        f"open('../../../../../..{target}', 'w').write('x')",
        f"import posix\nposix.mkdir({target!r})",
        f"import posix\nopen({target!r}, 'w', opener=lambda p, fl: posix.open(p, fl)).write('x')",
        f"import posix\nfd = posix.open({target!r}, posix.O_WRONLY | posix.O_CREAT)",
        f"import posix\nposix.symlink({target!r}, 'link')\nopen('link', 'w').write('x')",
        f"open('mine', 'w').write('x')\nimport posix\nposix.rename('mine', {target!r})",
        "import posix\nposix.chdir('/tmp')\nopen('escape_chdir', 'w')",
    ]
    try:
        for program in attempts:
            result = run_python(program, timeout_s=2.0)
            assert not result.ok, program
            assert not os.path.exists(target), program
        assert not os.path.exists("/tmp/escape_chdir")
    finally:
        for path in (target, "/tmp/escape_chdir"):
            if os.path.isdir(path):
                os.rmdir(path)
            elif os.path.exists(path):
                os.remove(path)
    assert_still_works()


def test_writing_inside_its_directory_works_and_is_removed(isolation: bool) -> None:
    program = "open('notes.txt', 'w').write('hi')\ndef f(x):\n    return open('notes.txt').read()\n"
    result = run_python(program, inputs=[[0]])
    assert outputs_match(result, ["hi"]) == [True]


def test_reading_parent_files_fails(isolation: bool, tmp_path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t")
    secret.chmod(0o644)
    program = f"def f(x):\n    return open({str(secret)!r}).read()\n"
    result = run_python(program, inputs=[[0]])
    assert "s3cr3t" not in repr(result)


def test_no_network(isolation: bool) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # the timeout: nobody connected
            accepted.append(server.accept())

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        program = (
            "import socket\n"
            "s = socket.socket()\n"
            "s.settimeout(1)\n"
            f"s.connect(('127.0.0.1', {port}))\n"
            "s.sendall(b'hello')\n"
        )
        # preload lets the import through, so the connect itself is what must fail
        result = run_python(program, preload=("socket",), timeout_s=2.0)
        assert not result.ok
        assert not run_python("import socket").ok  # and without preload, not even the import
        thread.join()
        assert accepted == []
    finally:
        server.close()
    assert_still_works()


def _can_unshare_network() -> bool:
    """Whether this process may create a network namespace (root with CAP_SYS_ADMIN)."""
    if os.geteuid() != 0:
        return False
    pid = os.fork()
    if pid == 0:
        import ctypes

        os._exit(ctypes.CDLL(None, use_errno=True).unshare(0x40000000) != 0)
    return os.waitpid(pid, 0)[1] == 0


@pytest.mark.skipif(not _can_unshare_network(), reason="needs root allowed to unshare")
def test_network_namespace_alone_blocks_network(tmp_path, monkeypatch) -> None:
    """The kernel layer on its own: a runner whose audit hook lets sockets through."""
    runner = tmp_path / "runner.py"
    source = Path(sandbox.RUNNER).read_text()
    assert '    "socket.",\n' in source
    runner.write_text(source.replace('    "socket.",\n', ""))
    monkeypatch.setattr(sandbox, "RUNNER", str(runner))
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        program = (
            "import socket\n"
            "def f():\n"
            "    s = socket.socket()\n"
            "    s.settimeout(1)\n"
            "    try:\n"
            f"        s.connect(('127.0.0.1', {server.getsockname()[1]}))\n"
            "    except OSError as exc:\n"
            "        return exc.errno\n"
            "    return 'connected'\n"
        )
        result = run_python(program, inputs=[[]], preload=("socket",))
        assert result.ok and result.result["outputs"][0][0]
        assert result.result["outputs"][0][1] != "connected"  # ENETUNREACH: no interface is up
    finally:
        server.close()


def test_environment_is_not_visible(isolation: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKGRAD_TEST_SECRET", "s3cr3t-value")
    program = (
        "import posix\n"
        "def f(x):\n"
        "    out = repr(posix.environ)\n"
        "    for path in ('/proc/self/environ', '/proc/%d/environ' % posix.getppid()):\n"
        "        try:\n"
        "            out += repr(open(path, 'rb').read())\n"
        "        except BaseException as exc:\n"
        "            out += type(exc).__name__\n"
        "    print(out)\n"
        "    return out\n"
    )
    result = run_python(program, inputs=[[0]])
    assert result.ok
    assert "s3cr3t-value" not in repr(result)


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_output_flood_is_truncated(stream: str) -> None:
    program = f"import sys\nwhile True:\n    sys.{stream}.write('x' * 10000)\n"
    start = time.monotonic()
    result = run_python(program, timeout_s=2.0, max_output_bytes=1000)
    assert time.monotonic() - start < 3.0
    assert not result.ok
    assert len(getattr(result, stream)) <= 1000
    assert_still_works()


@pytest.mark.parametrize(
    "program",
    [
        "print('PASS')\nimport posix\nposix._exit(0)\n",
        "def f(x):\n    print('all tests passed')\n    import posix\n    posix._exit(0)\n",
        "raise SystemExit(0)\n",
        "open('result.txt', 'w').write(\"{'error': '', 'outputs': [(True, 7)], 'checks': []}\")\n"
        "import posix\nposix._exit(0)\n",
    ],
    ids=["print-exit", "exit-in-call", "sys-exit", "forged-result"],
)
def test_exiting_early_or_printing_a_pass_earns_nothing(program: str) -> None:
    result = run_python(program, inputs=[[2]])
    assert not result.ok and result.result is None
    assert outputs_match(result, [7]) == [False]


@pytest.mark.parametrize(
    "program",
    [
        "class E:\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return E()\n",
        "class I(int):\n    def __eq__(self, other):\n        return True\n"
        "def f(x):\n    return I(0)\n",
        "class L(list):\n    def __eq__(self, other):\n        return True\n"
        "def f(x):\n    return L()\n",
        "class S(str):\n    def __eq__(self, other):\n        return True\n"
        "def f(x):\n    return S('no')\n",
    ],
    ids=["object", "int-subclass", "list-subclass", "str-subclass"],
)
def test_objects_with_lying_eq_do_not_pass(program: str) -> None:
    result = run_python(program, inputs=[[2]])
    assert outputs_match(result, [7]) == [False]


def test_tampering_with_the_runner_does_not_pass() -> None:
    program = (
        "import builtins, sys\n"
        "builtins.type = lambda x: int\n"
        "main = sys.modules['__main__']\n"
        "main._make_plain = lambda: (lambda v: (True, 7))\n"
        "def f(x):\n    return object()\n"
    )
    result = run_python(program, inputs=[[2]])
    assert outputs_match(result, [7]) == [False]


def test_introspection_is_denied() -> None:
    for program in [
        "import sys\nsys._getframe(1)",
        "try:\n    1/0\nexcept Exception as e:\n    e.__traceback__.tb_frame",
        "import sys\nsys.settrace(lambda *a: None)",
        "import gc",
        "def g():\n    pass\ng.__code__ = (lambda: 1).__code__",
    ]:
        result = run_python(program)
        assert not result.ok and "PermissionError" in result.error, program


@pytest.mark.skipif(os.geteuid() != 0, reason="privilege drop happens only as root")
def test_runs_as_nobody() -> None:
    result = run_python(
        "import posix\ndef f():\n    return [posix.getuid(), posix.getgid()]", inputs=[[]]
    )
    assert outputs_match(result, [[65534, 65534]]) == [True]


def test_garbled_result_files_are_rejected(tmp_path) -> None:
    cases = {
        "garbage": b"\x00\xffnot python",
        "deep": b"[" * 100_000 + b"]" * 100_000,
        "huge-int": b"{'error': '', 'outputs': [(True, " + b"9" * 5000 + b")], 'checks': []}",
        "wrong-shape": b"{'error': '', 'outputs': 7, 'checks': []}",
        "set": b"{'error': '', 'outputs': [(True, {1})], 'checks': []}",
        "too-large": b" " * (sandbox.MAX_RESULT_BYTES + 10),
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        assert sandbox._read_result(str(path))[0] is None, name
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert sandbox._read_result(str(fifo))[0] is None  # returns at once, no blocking read
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "garbage")
    assert sandbox._read_result(str(link))[0] is None


def test_run_many_dedupes_and_keeps_order(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = sandbox.run_python

    def counting(program: str, **kwargs: object) -> sandbox.SandboxResult:
        calls.append(program)
        return real(program, **kwargs)

    monkeypatch.setattr(sandbox, "run_python", counting)
    programs = [f"def f(x):\n    return x + {i % 8}\n" for i in range(32)]
    jobs = [SandboxJob(p, inputs=((1,),)) for p in programs]
    start = time.monotonic()
    results = run_many(jobs, workers=4)
    elapsed = time.monotonic() - start
    assert len(calls) == 8
    assert [r.result["outputs"][0][1] for r in results] == [1 + i % 8 for i in range(32)]
    assert elapsed < 3.0
