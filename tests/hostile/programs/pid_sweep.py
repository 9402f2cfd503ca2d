# class: pid sweep
# expect: kill -9 of every pid near the trainer's reaches nothing outside
import os

TRAINER = int("__TRAINER_PID__")
me = os.getpid()


def f(x):
    hits = 0
    for pid in range(1, 32768):
        if pid == me:
            continue
        try:
            os.kill(pid, 9)
            hits += 1
        except OSError:
            pass
    for pid in range(max(1, TRAINER - 500), TRAINER + 20000):
        if pid != me:
            try:  # noqa: SIM105 (contextlib is not importable in the sandbox)
                os.kill(pid, 9)
            except OSError:
                pass
    return hits
