"""The hostile-program suite: every program in ``programs/`` must be contained (``harness.py``
says what that means), run by a trainer as the user running the tests (root in CI) and, when
that is root, again by a trainer running as an unprivileged user (uid 65533).

Each program runs once per trainer, in a batch next to three correct completions; the module
fixtures run them all, the parametrized tests then check one record each, and
``test_summary`` prints the counts (tried / contained / escaped) into the test output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from taskgrad.tasks import sandbox
from tests.hostile import harness

PROGRAMS = harness.load_programs()
NAMES = [p.name for p in PROGRAMS]
UNPRIVILEGED_UID = 65533
ROOT = Path(__file__).resolve().parents[2]
DRIVER_TIMEOUT_S = 600
# Every class of attack the suite must cover (the "# class:" headers).
CLASSES = {
    "infinite loop", "fork bomb", "memory bomb", "disk fill", "inode flood", "deep nested dirs",
    "chmod-0 dirs", "file escape", "env secrets", "network", "signal parent", "pid sweep",
    "pidfd", "ptrace", "prlimit", "renice", "sched_setaffinity", "output flood", "limit reset",
    "import tricks", "introspection", "lying objects", "result rewriting", "mknod/mkfifo",
    "symlink race", "privileges",
}  # fmt: skip


def _require_sandbox() -> None:
    try:
        mode = sandbox.check_available()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    if mode != "isolated":
        pytest.skip("the sandbox runs without kernel isolation (TASKGRAD_UNSAFE_CODE_EXEC=1)")


@pytest.fixture(scope="module")
def as_test_user() -> dict[str, dict[str, Any]]:
    _require_sandbox()
    return {record["name"]: record for record in harness.run_all()}


@pytest.fixture(scope="module")
def as_unprivileged() -> dict[str, Any]:
    """Records of a trainer process running as uid 65533 (needs root to start it)."""
    if os.geteuid() != 0:
        pytest.skip("tests run unprivileged already: the run as the test user is that run")
    _require_sandbox()
    work = tempfile.mkdtemp(prefix="taskgrad-hostile-", dir="/tmp")
    try:
        # A copy every user can read (the checkout or the interpreter may sit in /root).
        os.chmod(work, 0o755)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(ROOT / "taskgrad", Path(work, "taskgrad"), ignore=ignore)
        shutil.copytree(ROOT / "tests" / "hostile", Path(work, "hostile"), ignore=ignore)
        out_dir = Path(work, "out")
        out_dir.mkdir(mode=0o777)
        out_dir.chmod(0o777)
        python = _python_for(UNPRIVILEGED_UID)
        if python is None:
            pytest.skip(
                f"no Python >= 3.11 that uid {UNPRIVILEGED_UID} may run (tried {sys.executable}, "
                "/usr/bin/python3): the unprivileged run needs one"
            )
        out = out_dir / "records.jsonl"
        driver = subprocess.run(
            [python, "-I", "-B", str(Path(work, "hostile", "harness.py")), work, str(out)],
            cwd=work,
            env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
            user=UNPRIVILEGED_UID,
            group=UNPRIVILEGED_UID,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=DRIVER_TIMEOUT_S,
        )
        records = {}
        if out.exists():
            for line in out.read_text().splitlines():
                record = json.loads(line)
                records[record["name"]] = record
        return {"records": records, "returncode": driver.returncode, "stderr": driver.stderr}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _python_for(uid: int) -> str | None:
    for candidate in (sys.executable, "/usr/bin/python3"):
        try:
            ok = subprocess.run(
                [candidate, "-I", "-c", "import sys; sys.exit(sys.version_info < (3, 11))"],
                user=uid,
                group=uid,
                extra_groups=[],
                capture_output=True,
                timeout=30,
            )
        except OSError:
            continue
        if ok.returncode == 0:
            return candidate
    return None


def test_the_suite_covers_every_class() -> None:
    assert len(PROGRAMS) >= 40
    missing = CLASSES - {p.kind for p in PROGRAMS}
    assert not missing, missing


@pytest.mark.parametrize("name", NAMES)
def test_contained_as_test_user(name: str, as_test_user: dict[str, dict[str, Any]]) -> None:
    record = as_test_user[name]
    assert record["contained"], f"{name} ({record['class']}): {record['failures']}"


@pytest.mark.parametrize("name", NAMES)
def test_contained_unprivileged(name: str, as_unprivileged: dict[str, Any]) -> None:
    record = as_unprivileged["records"].get(name)
    assert record is not None, (
        f"the unprivileged trainer died before reporting {name} (exit status "
        f"{as_unprivileged['returncode']}): {as_unprivileged['stderr'][-2000:]}"
    )
    assert record["user"] == f"uid {UNPRIVILEGED_UID}"
    assert record["contained"], f"{name} ({record['class']}): {record['failures']}"


def test_summary(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> None:
    """Print tried / contained / escaped per trainer user (the numbers of the report)."""
    lines = []
    for fixture in ("as_test_user", "as_unprivileged"):
        try:
            value = request.getfixturevalue(fixture)
        except pytest.skip.Exception as exc:
            lines.append(f"{fixture}: skipped ({exc})")
            continue
        records = value["records"] if fixture == "as_unprivileged" else value
        users = sorted({r["user"] for r in records.values()}) or ["?"]
        contained = sum(r["contained"] for r in records.values())
        escaped = sorted(r["name"] for r in records.values() if not r["contained"])
        lines.append(
            f"trainer as {'/'.join(users)}: tried {len(PROGRAMS)}, reported {len(records)}, "
            f"contained {contained}, escaped {len(escaped)} {escaped or ''}".rstrip()
        )
    with capsys.disabled():
        print("\nhostile suite: " + "; ".join(lines))
