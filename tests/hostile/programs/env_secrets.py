# class: env secrets
# expect: the trainer's environment never reaches the program
import os

TRAINER = int("__TRAINER_PID__")


def f(x):
    found = [repr(dict(os.environ))]
    for path in ("/proc/self/environ", "/proc/1/environ", f"/proc/{TRAINER}/environ"):
        try:
            with open(path, "rb") as fh:
                found.append(repr(fh.read()))
        except OSError as exc:
            found.append(type(exc).__name__)
    print(found, flush=True)
    return found
