# class: signals
# expect: stopping itself or its supervisor just times out
import os
import signal


def f(x):
    try:  # noqa: SIM105 (contextlib is not importable in the sandbox)
        os.kill(1, signal.SIGSTOP)
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGSTOP)
    return x * 3 + 1
