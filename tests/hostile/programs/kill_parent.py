# class: signal parent
# expect: the trainer, the launcher and the supervisor survive
import os
import signal

TRAINER = int("__TRAINER_PID__")


def f(x):
    out = []
    for pid in (os.getppid(), 1, TRAINER, TRAINER + 1):
        for sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM):
            try:
                os.kill(pid, sig)
                out.append(f"{pid}:{sig}")
            except OSError:
                pass
    return out
