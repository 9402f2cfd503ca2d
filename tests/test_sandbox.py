"""The code sandbox: its API and semantics, the isolation it builds (seen from inside and from
the trainer), its refusal where the kernel cannot isolate, and the trainer-side asserts.

Attacks live in tests/hostile/ (programs as data, run as root and unprivileged)."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time

import pytest

from taskgrad.tasks import isolation, sandbox
from taskgrad.tasks.base import Sample
from taskgrad.tasks.code import Code, score_programs
from taskgrad.tasks.dataset import parse_tests
from taskgrad.tasks.sandbox import SandboxJob, outputs_match, run_many, run_python, same_value
from taskgrad.tasks.sandbox_asserts import AssertFormError, check_assert, compile_assert

GOOD = "def f(x):\n    return x * 3 + 1\n"


def _isolation_problem() -> str:
    """Why programs cannot run isolated here (empty: they can)."""
    try:
        mode = sandbox.check_available()
    except RuntimeError as exc:
        return str(exc)
    return "" if mode == "isolated" else f"{isolation.UNSAFE_ENV}=1: running without isolation"


_PROBLEM = _isolation_problem()
needs_sandbox = pytest.mark.skipif(bool(_PROBLEM), reason=_PROBLEM or "isolated")


@pytest.fixture
def fresh_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the process-wide decision (isolated / unsafe / refused) for this test only."""
    monkeypatch.setattr(sandbox._MODE, "mode", "")


# -- normal operation ---------------------------------------------------------------------------
@needs_sandbox
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


@needs_sandbox
def test_errors_are_per_call() -> None:
    result = run_python("def f(x):\n    return 10 // x\n", inputs=[[2], [0]])
    assert result.ok
    assert result.result["outputs"] == [(True, 5), (False, "ZeroDivisionError")]
    assert outputs_match(result, [5, 0]) == [True, False]


@needs_sandbox
def test_program_errors_are_reported_not_raised() -> None:
    for program, error in [
        ("def f(x) return", "SyntaxError"),
        ("raise SystemExit(3)", "SystemExit"),
    ]:
        result = run_python(program, inputs=[[1]])
        assert not result.ok and error in result.error and result.result is None
    assert not run_python("x" * 200_000).ok  # refused without starting a process


@needs_sandbox
def test_only_preloaded_modules_import() -> None:
    assert run_python("import math\ndef f(x):\n    return math.isqrt(x)", inputs=[[17]]).ok
    for name in ("json", "ctypes", "resource", "select"):  # the last three: the runner's own
        blocked = run_python(f"import {name}")
        assert not blocked.ok and "ModuleNotFoundError" in blocked.error, name
    assert run_python("import json", preload=("json",)).ok
    with pytest.raises(ValueError, match="preload"):
        run_python("pass", preload=("os; import x",))


def test_same_value_is_strict_about_types() -> None:
    assert same_value(2.0, 2) and same_value([1, [2]], [1, [2]])
    assert not same_value(True, 1) and not same_value(1, True)
    assert not same_value("1", 1) and not same_value([1], (1,)) and not same_value(None, 0)


@needs_sandbox
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


@needs_sandbox
@pytest.mark.parametrize(
    "program",
    [
        "while True:\n    pass\n",
        "import time\ntime.sleep(60)\n",
        "def f(x):\n    while True: pass\n",
    ],
    ids=["cpu-loop", "sleep", "loop-in-call"],
)
def test_the_deadline_is_kept(program: str) -> None:
    start = time.monotonic()
    result = run_python(program, inputs=[[1]], timeout_s=0.5)
    assert result.timed_out and not result.ok and result.result is None
    assert time.monotonic() - start < 2.5


@needs_sandbox
@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_output_floods_are_cut(stream: str) -> None:
    program = f"import sys\nwhile True:\n    sys.{stream}.write('x' * 10000)\n"
    start = time.monotonic()
    result = run_python(program, timeout_s=2.0, max_output_bytes=1000)
    assert not result.ok and len(getattr(result, stream)) == 1000
    assert time.monotonic() - start < 3.0


# -- the isolation, seen from inside and from the trainer --------------------------------------
INSIDE = """
import ctypes, os, socket

libc = ctypes.CDLL(None, use_errno=True)

def f():
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    caps = (ctypes.c_uint32 * 6)()
    libc.capget(header, caps)
    try:
        socket.socket().connect(("127.0.0.1", 9))
        network = "connected"
    except OSError as exc:
        network = exc.errno
    return {
        "pid": os.getpid(), "ppid": os.getppid(), "uid": os.getuid(), "root": os.listdir("/"),
        "proc": os.path.exists("/proc"), "caps": list(caps),
        "no_new_privs": libc.prctl(39, 0, 0, 0, 0), "seccomp": libc.prctl(21, 0, 0, 0, 0),
        "network": network, "env": dict(os.environ),
    }
"""


@needs_sandbox
def test_the_program_sees_an_empty_confined_world() -> None:
    result = run_python(INSIDE, inputs=[[]], preload=("ctypes", "os", "socket"))
    assert result.ok, result
    seen = result.result["outputs"][0][1]
    assert seen["pid"] == 2 and seen["ppid"] == 1  # PID namespace: supervisor is init
    assert seen["uid"] == 0  # root of its own user namespace, with no capability at all:
    assert seen["caps"] == [0] * 6 and seen["no_new_privs"] == 1 and seen["seccomp"] == 2
    assert seen["root"] == [] and not seen["proc"]  # an empty tmpfs root, no /proc
    assert seen["network"] != "connected"  # no interface is up in its network namespace
    assert set(seen["env"]) <= {"LC_CTYPE"}  # Python's own locale coercion, nothing inherited


@needs_sandbox
def test_its_disk_is_small_and_vanishes() -> None:
    program = (
        "import os\n"
        "def f(name):\n"
        "    n = 0\n"
        "    try:\n"
        "        while n < 100000:\n"
        "            os.mkdir(name + str(n)); n += 1\n"
        "    except OSError as exc:\n"
        "        return [n, exc.errno]\n"
    )
    before = set(os.listdir(tempfile.gettempdir()))
    result = run_python(program, inputs=[["d"]], preload=("os",))
    assert result.result["outputs"][0][1] == [sandbox.DISK_INODES - 1, 28]  # ENOSPC: inodes
    files = "def f(x):\n    open('a', 'w').write('x' * 10**6)\n    return open('a').read(3)\n"
    assert outputs_match(run_python(files, inputs=[[0]]), ["xxx"]) == [True]
    assert set(os.listdir(tempfile.gettempdir())) == before  # nothing on the host to clean up


@needs_sandbox
@pytest.mark.skipif(os.geteuid() != 0, reason="uid slots are for a root trainer")
def test_concurrent_sandboxes_run_under_distinct_unprivileged_uids() -> None:
    program = "import time\ndef f(x):\n    time.sleep(0.6)\n    return x\n"
    jobs = [SandboxJob(program + f"# {i}\n", inputs=((i,),)) for i in range(3)]
    uids: set[int] = set()
    done = threading.Event()

    me = os.getpid()

    def status(pid: str) -> dict[str, str]:
        with open(f"/proc/{pid}/status") as fh:
            return dict(line.split(":", 1) for line in fh if ":" in line)

    def ours(pid: str) -> bool:
        """A descendant of this process (other sandboxes may run on the machine meanwhile)."""
        for _ in range(4):  # launcher -> supervisor -> worker
            pid = status(pid)["PPid"].strip()
            if int(pid) == me:
                return True
        return False

    def watch() -> None:
        while not done.is_set():
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        if b"sandbox_runner.py" not in fh.read():
                            continue
                    if ours(pid):
                        uids.add(int(status(pid)["Uid"].split()[0]))
                except (OSError, KeyError, ValueError):
                    continue
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        results = run_many(jobs, workers=3)
        assert all(r.ok for r in results), [r.error for r in results]
    finally:
        done.set()
        watcher.join()
    base = isolation.uid_base()
    slots = uids - {0}  # 0: a launcher seen before it dropped to its slot (no program code yet)
    assert len(slots) == 3, uids
    assert all(base <= uid < base + 64 * 4096 for uid in slots), uids


@needs_sandbox
def test_trainer_deadline_backs_up_the_supervisor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should the supervisor not end the run (here: its deadline is 30 s), the trainer's own
    deadline kills the whole process group, and with it the namespace."""
    monkeypatch.setattr(sandbox, "STARTUP_SLACK_S", 0.5)
    uid = isolation.UID_SLOTS.acquire() if os.geteuid() == 0 else None
    try:
        job = sandbox._make_job(
            "import time\ntime.sleep(60)\n", [], "f", 30.0, 256, 1000, (), True, uid, None
        )
        start = time.monotonic()
        result = sandbox._spawn(job, 0, 0.5, 1000)
    finally:
        if uid is not None:
            isolation.UID_SLOTS.release(uid)
    assert result.timed_out and not result.ok and time.monotonic() - start < 3


# -- refusal and the explicit opt-in ---------------------------------------------------------
def test_refuses_without_kernel_isolation(
    fresh_mode: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(isolation.UNSAFE_ENV, raising=False)
    monkeypatch.setattr(sandbox, "_isolation_probe", lambda: "unshare(CLONE_NEWUSER): denied")
    with pytest.raises(RuntimeError) as info:
        run_python(GOOD, inputs=[[1]])
    message = str(info.value)
    assert "\n" not in message
    assert "unshare(CLONE_NEWUSER): denied" in message and f"{isolation.UNSAFE_ENV}=1" in message
    sample = Sample("code", "p", "x*3+1", {"entry": "f", "inputs": [[1]], "outputs": [4]})
    with pytest.raises(RuntimeError, match="code sandbox unavailable"):
        Code().rewards([sample], ["x*3+1"])


def test_training_with_code_tasks_refuses_at_startup_leaving_nothing(
    fresh_mode: None, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """The check runs in setup, before any model is built or the run directory is written;
    a mix without code-running tasks does not need the sandbox."""
    from taskgrad.config import ConfigError, load_config
    from taskgrad.tasks import build_tasks
    from taskgrad.trainer import check_tasks, setup

    monkeypatch.delenv(isolation.UNSAFE_ENV, raising=False)
    monkeypatch.setattr(sandbox, "_isolation_probe", lambda: "unshare(CLONE_NEWUSER): denied")
    cfg = load_config(None, ["tasks=code,countdown", "progress=false"])
    with pytest.raises(ConfigError, match=r"code sandbox unavailable.*denied"):
        setup(cfg, tmp_path / "run", resume=False)
    assert not (tmp_path / "run").exists()
    check_tasks(build_tasks(load_config(None, ["tasks=countdown"]).tasks, eval_size=8, seed=0))
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "p", "answer": "1", "tests": [{"input": [1], "output": 1}]}\n')
    spec = f"tasks=[{{name: mine, type: dataset, options: {{path: '{rows}', reward: code}}}}]"
    assert build_tasks(load_config(None, [spec]).tasks, eval_size=1, seed=0)[0].runs_code


def test_bad_opt_in_value_is_one_clear_line(
    fresh_mode: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(isolation.UNSAFE_ENV, "yes")
    with pytest.raises(ValueError, match=r"TASKGRAD_UNSAFE_CODE_EXEC must be 1 .* not 'yes'"):
        run_python(GOOD, inputs=[[1]])


def test_unsafe_opt_in_runs_loudly_and_cleans_up(
    fresh_mode: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(isolation.UNSAFE_ENV, "1")
    monkeypatch.setattr(sandbox, "_isolation_probe", lambda: "simulated: no user namespaces")
    with caplog.at_level(logging.WARNING, logger="taskgrad.sandbox"):
        assert sandbox.check_available() == "unsafe"
    assert "WITHOUT kernel isolation" in caplog.text and "simulated" in caplog.text
    result = run_python(GOOD, inputs=[[2]])
    assert outputs_match(result, [7]) == [True]
    # The cleanup that used to raise (RecursionError, TypeError) or take seconds: deep nesting
    # and unreadable directories in the program's temporary directory.
    mangler = (
        "import os\n"
        "top = os.getcwd()\n"
        "for i in range(1100):\n"
        "    os.mkdir('d'); os.chdir('d')\n"
        "os.chdir(top)\n"
        "os.makedirs('x/y'); os.chmod('x/y', 0); os.chmod('x', 0)\n"
        "def f(x):\n    return os.getcwd()\n"
    )
    start = time.monotonic()
    result = run_python(mangler, inputs=[[0]], preload=("os",))
    assert result.ok, result
    workdir = result.result["outputs"][0][1]
    assert not os.path.exists(workdir) and time.monotonic() - start < 5


def test_remove_tree_never_raises_and_is_bounded(tmp_path) -> None:
    top = tmp_path / "t"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    for _ in range(2500):  # deeper than PATH_MAX can name, and than Python may recurse
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)
    (top / "locked" / "inner").mkdir(parents=True)
    (top / "locked").chmod(0)
    (top / "link").symlink_to(tmp_path)  # never followed: tmp_path itself must survive
    start = time.monotonic()
    sandbox._remove_tree(str(top), time.monotonic() + 20)
    assert not top.exists() and tmp_path.exists() and time.monotonic() - start < 20
    sandbox._remove_tree(str(tmp_path / "missing"), time.monotonic() + 1)  # no error either


# -- outcomes, as reported and as parsed ------------------------------------------------------
@needs_sandbox
@pytest.mark.parametrize(
    "program",
    [
        "print('PASS')\nimport posix\nposix._exit(0)\n",
        "def f(x):\n    print('all tests passed')\n    import posix\n    posix._exit(0)\n",
        "raise SystemExit(0)\n",
        "import posix\nposix.write(3, b\"''\\n(True, 7)\\n\")\ndef f(x):\n    return 0\n",
    ],
    ids=["print-exit", "exit-in-call", "sys-exit", "forged-line"],
)
def test_exiting_early_or_printing_a_pass_earns_nothing(program: str) -> None:
    result = run_python(program, inputs=[[2]])
    assert outputs_match(result, [7]) == [False]


@needs_sandbox
@pytest.mark.parametrize(
    "program",
    [
        "class E:\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return E()\n",
        "class I(int):\n    def __eq__(self, other):\n        return True\n"
        "def f(x):\n    return I(0)\n",
        "class S(str):\n    def __eq__(self, other):\n        return True\n"
        "def f(x):\n    return S('no')\n",
    ],
    ids=["object", "int-subclass", "str-subclass"],
)
def test_objects_with_lying_eq_do_not_pass(program: str) -> None:
    assert outputs_match(run_python(program, inputs=[[2]]), [7]) == [False]


def test_reports_are_parsed_as_untrusted_data() -> None:
    def parse(data: bytes, n_calls: int = 1, header: bytes | None = None) -> sandbox.SandboxResult:
        header = header or b"R 0 0 0 %d\n" % len(data)
        return sandbox._result(header + data, True, n_calls, 1.0, "", "", 0)

    assert parse(b"''\n(True, 7)\n").ok
    for name, data in {
        "garbage": b"\x00\xffnot python\n",
        "deep": b"''\n" + b"[" * 100_000 + b"]" * 100_000 + b"\n",
        "huge-int": b"''\n(True, " + b"9" * 5000 + b")\n",
        "wrong-shape": b"''\n7\n",
        "set": b"''\n(True, {1})\n",
        "call": b"''\n(True, __import__('os'))\n",
        "extra-line": b"''\n(True, 7)\n(True, 8)\n",
        "cut-line": b"''\n(True, 7)",
        "no-lines": b"",
    }.items():
        assert not parse(data).ok, name
    assert not parse(b"''\n(True, 7)\n", header=b"R 0 0 1 12\n").ok  # overflow flagged
    assert parse(b"", header=b"R 0 1 0 0\n").timed_out
    assert "setup failed: no userns" in parse(b"", header=b"E no userns\n").error


# -- checks in the trainer: assert-style tests -------------------------------------------------
@pytest.mark.parametrize(
    ("source", "outcomes", "holds"),
    [
        ("assert f(3) > 8", [(True, 9)], True),
        ("assert f(3) > 8", [(True, 8)], False),
        ("assert abs(f(2.0) - 1.414) < 1e-3", [(True, 1.4142)], True),
        ("assert math.isclose(f(2), 4.0, rel_tol=1e-6)", [(True, 4)], True),
        ("assert set(f([1, 2, 2])) == {1, 2}", [(True, [2, 1])], True),
        ("assert sorted(f([3, 1])) == [1, 3]", [(True, [3, 1])], True),
        ("assert f(1) == (1, 2)", [(True, [1, 2])], True),
        ("assert f(1)[0] == 'a' and len(f(2)) == 2", [(True, "ab"), (True, [0, 0])], True),
        ("assert f(1) is None", [(True, None)], True),
        ("assert not f(0)", [(True, 0)], True),
        ("assert f(1) == True", [(True, 1)], False),  # bools match only bools
        ("assert f(1) > 0", [(False, "ZeroDivisionError")], False),  # the call raised
        ("assert f(1) * 'x' == 'xx'", [(True, 2)], False),  # no sequence repetition
        ("assert f(1) / f(2) == 1", [(True, 1), (True, 0)], False),  # ZeroDivisionError: fails
        ("assert 2 in f(1)", [(True, [1, 2.0])], True),
    ],
)
def test_asserts_are_evaluated_in_the_trainer(source: str, outcomes: list, holds: bool) -> None:
    compiled = compile_assert(source, "f")
    assert len(compiled.calls) == len(outcomes)
    assert check_assert(compiled, outcomes) is holds


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("assert f(x) == 2", "literal arguments"),
        ("assert all(f(i) > 0 for i in range(3))", "GeneratorExp"),
        ("assert g(1) == 2", "'g', but the tested function is 'f'"),
        ("assert f(1) == 2\nassert f(2) == 3", "one assert statement"),
        ("assert f(1) ** 2 == 4", "BinOp"),
        ("assert math.sqrt(f(4)) == 2", "only isclose"),
        ("assert f(1) == 2 if True else 3", "IfExp"),
        ("assert __import__('os').system('x')", "__import__"),
    ],
)
def test_asserts_the_trainer_cannot_evaluate_are_rejected(source: str, reason: str) -> None:
    with pytest.raises(AssertFormError, match=reason.replace("(", r"\(")):
        compile_assert(source, "f")
    with pytest.raises(ValueError, match=r"^data.jsonl:7: test 1\b") as info:
        parse_tests(["assert f(0) == 1", source], "f", "data.jsonl:7")
    assert "\n" not in str(info.value)


@needs_sandbox
def test_a_program_cannot_subvert_the_asserts_that_check_it() -> None:
    """The assert runs in the trainer: rebinding builtins or the function's name inside the
    sandbox changes nothing."""
    meta = {
        "entry": "f",
        "inputs": [],
        "outputs": [],
        "asserts": ["assert f([3, 1, 2]) == sorted([2, 3, 1])"],
    }
    sample = Sample("code", "sort", "", meta)
    cheats = [
        "import builtins\nbuiltins.sorted = lambda *a, **k: [3, 1, 2]\ndef f(x):\n    return x\n",
        "def f(x):\n    return x\nAssertionError = None\n",
        "def f(x):\n    raise SystemExit(0)\n",
    ]
    good = "def f(x):\n    return sorted(x)\n"
    rewards = score_programs([sample] * 4, [f"```\n{c}```" for c in [*cheats, good]])
    assert [r.value for r in rewards] == [0.0, 0.0, 0.0, 1.0]
