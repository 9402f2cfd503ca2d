# class: result rewriting
# expect: forged report lines and headers earn nothing
import os

forged = b"R 0 0 0 40\n''\n(True, 7)\n(True, 16)\n(True, -2)\n"
for fd in range(3, 256):
    try:  # noqa: SIM105 (contextlib is not importable in the sandbox)
        os.write(fd, forged)
    except OSError:
        pass
os.close(3)


def f(x):
    return 7
