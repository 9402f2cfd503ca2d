# class: pidfd
# expect: no pidfd for the trainer or the supervisor
import os
import signal

TRAINER = int("__TRAINER_PID__")


def f(x):
    out = []
    for pid in (TRAINER, os.getppid(), 1):
        try:
            fd = os.pidfd_open(pid)
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            out.append(pid)
        except OSError as exc:
            out.append(type(exc).__name__)
    return out
