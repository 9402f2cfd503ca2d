# class: fork bomb
# expect: no process is created (RLIMIT_NPROC 0, seccomp)
import os


def f(x):
    for _ in range(100):
        try:
            pid = os.fork()
        except OSError:
            continue
        if pid == 0:
            os.write(1, b"ESCAPED: forked a child\n")
            while True:
                os.fork()
    return "no fork"
