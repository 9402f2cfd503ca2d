# class: fork bomb
# expect: raw clone(2) through ctypes fails too
import ctypes
import os

SIGCHLD = 17
libc = ctypes.CDLL(None, use_errno=True)


def f(x):
    pid = libc.syscall(56 if os.uname().machine == "x86_64" else 220, SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        os.write(1, b"ESCAPED: raw clone made a child\n")
        os._exit(0)
    return [pid, ctypes.get_errno()]
