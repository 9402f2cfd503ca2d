# class: pid sweep
# expect: kill(-1, SIGKILL) reaches only its own namespace
import os


def f(x):
    try:
        os.kill(-1, 9)
    except OSError as exc:
        return type(exc).__name__
    return "sent"
