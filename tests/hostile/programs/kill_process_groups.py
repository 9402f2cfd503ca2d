# class: signal parent
# expect: process groups outside its own are unreachable
import os
import signal

TRAINER = int("__TRAINER_PID__")


def f(x):
    for target in (lambda: os.killpg(os.getpgid(TRAINER), 9), lambda: os.kill(-TRAINER, 9)):
        try:  # noqa: SIM105 (contextlib is not importable in the sandbox)
            target()
        except OSError:
            pass
    os.kill(0, signal.SIGKILL)  # its own process group: only itself
    return "alive?"
