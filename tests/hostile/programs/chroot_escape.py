# class: file escape
# expect: no chroot (no CAP_SYS_CHROOT, seccomp)
import os


def f(x):
    try:
        os.mkdir("jail")
        os.chroot("jail")
        for _ in range(50):
            os.chdir("..")
        os.chroot(".")
        with open("/etc/passwd") as fh:
            print("ESCAPED: chroot escape", fh.read(20), flush=True)
    except OSError as exc:
        return type(exc).__name__
    return "escaped?"
