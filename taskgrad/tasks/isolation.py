"""Trainer-side policy of the code sandbox: may code run here, under which uid, and the opt-in.

The isolation itself is built by ``sandbox_runner.py`` from kernel mechanisms (user, PID,
mount, network, IPC and UTS namespaces, a private tmpfs root, rlimits, no capabilities). This
module decides what happens around it:

* **Refusal by default.** Where the kernel refuses the isolation (no user namespaces: a
  hardened sysctl, AppArmor's ``apparmor_restrict_unprivileged_userns``, Docker's default
  seccomp profile, root without ``CAP_SETUID``), code rewards raise one line saying why and how
  to enable it. They never silently fall back to weaker containment.
* **An explicit opt-in for trusted code**: ``TASKGRAD_UNSAFE_CODE_EXEC=1`` runs programs without
  the namespaces (rlimits, own session, a temporary directory, and as root a separate uid
  remain) and logs a warning saying so. Meant for code you trust, e.g. reference solutions.
* **A uid per sandbox slot.** As root, each concurrently running sandbox of this process gets its
  own unprivileged uid (``TASKGRAD_SANDBOX_UID_BASE`` + 64 * (pid % 4096) + slot), so that
  neither the launcher nor the program ever holds the trainer's root, and sandboxes differ in
  uid on top of living in separate PID namespaces. Unprivileged trainers need no uid: each
  sandbox's user namespace maps its root to the trainer's uid, and the PID namespace hides the
  trainer and the other sandboxes from it.
"""

from __future__ import annotations

import logging
import os
import threading

UNSAFE_ENV = "TASKGRAD_UNSAFE_CODE_EXEC"
UID_BASE_ENV = "TASKGRAD_SANDBOX_UID_BASE"
# Far above any uid a distribution hands out (login users start at 1000, systemd's dynamic and
# container ranges end below 1 879 048 192, see systemd's UIDS-GIDS.md) and below 2**31.
DEFAULT_UID_BASE = 1_900_000_000
SLOTS_PER_PROCESS = 64
PROCESS_BLOCKS = 4096
log = logging.getLogger("taskgrad.sandbox")


def unsafe_opt_in() -> bool:
    """Whether ``TASKGRAD_UNSAFE_CODE_EXEC=1`` is set; any other non-empty value but 0 is a
    configuration error (raised as one line)."""
    value = os.environ.get(UNSAFE_ENV, "")
    if value in ("", "0"):
        return False
    if value == "1":
        return True
    raise ValueError(
        f"{UNSAFE_ENV} must be 1 (run model code without kernel isolation) or unset, not {value!r}"
    )


def unavailable_message(reason: str) -> str:
    """The one line code rewards raise when the kernel refuses the isolation."""
    return (
        f"code sandbox unavailable: the kernel refused its isolation ({reason}). Allow user "
        "namespaces (sysctl user.max_user_namespaces=10000 kernel.unprivileged_userns_clone=1 "
        "kernel.apparmor_restrict_unprivileged_userns=0; in Docker --security-opt "
        "seccomp=unconfined), or, for trusted code only, set "
        f"{UNSAFE_ENV}=1 to run it without isolation (see docs/sandbox.md)"
    )


def warn_unsafe(reason: str) -> None:
    log.warning(
        "%s=1: running model-written code WITHOUT kernel isolation (%s). A hostile program can "
        "read your files, use the network and kill this process. Use it for trusted code only.",
        UNSAFE_ENV,
        reason,
    )


def uid_base() -> int:
    raw = os.environ.get(UID_BASE_ENV, "")
    if not raw:
        return DEFAULT_UID_BASE
    top = 2**31 - 1 - SLOTS_PER_PROCESS * PROCESS_BLOCKS
    if not raw.isdigit() or not 1000 <= int(raw) <= top:
        raise ValueError(f"{UID_BASE_ENV} must be an integer in [1000, {top}], not {raw!r}")
    return int(raw)


class UidSlots:
    """Unprivileged uids for the sandboxes of this process, one per concurrent sandbox."""

    def __init__(self) -> None:
        self._free: list[int] | None = None
        self._pid = 0
        self._cond = threading.Condition()

    def acquire(self) -> int:
        with self._cond:
            if self._free is None or self._pid != os.getpid():  # first use, or a forked child
                self._pid = os.getpid()
                first = uid_base() + SLOTS_PER_PROCESS * (os.getpid() % PROCESS_BLOCKS)
                self._free = list(range(first + SLOTS_PER_PROCESS - 1, first - 1, -1))
            while not self._free:  # more than SLOTS_PER_PROCESS sandboxes at once: wait
                self._cond.wait()
            return self._free.pop()

    def release(self, uid: int) -> None:
        with self._cond:
            assert self._free is not None
            self._free.append(uid)
            self._cond.notify()


UID_SLOTS = UidSlots()
