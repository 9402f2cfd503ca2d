# class: sched_setaffinity
# expect: the trainer keeps its CPUs and scheduler
import os

TRAINER = int("__TRAINER_PID__")


def f(x):
    out = []
    for pid in (TRAINER, 1):
        try:
            os.sched_setaffinity(pid, {0})
            out.append("pinned")
        except OSError as exc:
            out.append(type(exc).__name__)
        try:
            os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
            out.append("idled")
        except OSError as exc:
            out.append(type(exc).__name__)
    return out
