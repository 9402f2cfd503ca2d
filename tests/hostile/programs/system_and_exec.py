# class: fork bomb
# expect: no shell, no exec: nothing to run, no process to run it
import os


def f(x):
    out = []
    for attempt in (lambda: os.system("id"), lambda: os.execv("/bin/sh", ["sh", "-c", "id"])):
        try:
            out.append(repr(attempt()))
        except OSError as exc:
            out.append(type(exc).__name__)
    return out
