# class: renice
# expect: no renice of the trainer, its group, or its user's processes
import os

TRAINER = int("__TRAINER_PID__")


def f(x):
    out = []
    for which, who in (
        (os.PRIO_PROCESS, TRAINER),
        (os.PRIO_PROCESS, 1),
        (os.PRIO_PGRP, 0),
        (os.PRIO_USER, 0),
        (os.PRIO_USER, os.getuid()),
    ):
        try:
            os.setpriority(which, who, 19)
            out.append("set")
        except OSError as exc:
            out.append(type(exc).__name__)
    return out
