# class: privileges
# expect: no new namespaces (nested user namespaces are capped to zero), no setns, no mount:
# nothing that could give it capabilities back, or memory outside its limits via a new tmpfs
import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000


def attempt(name, result):
    if result == 0:
        print("ESCAPED:", name, flush=True)
    return ctypes.get_errno()


def f(x):
    out = [attempt("made a user+mount namespace", libc.unshare(CLONE_NEWUSER | CLONE_NEWNS))]
    out.append(attempt("made a user namespace", libc.unshare(CLONE_NEWUSER)))
    out.append(attempt("made a mount namespace", libc.unshare(CLONE_NEWNS)))
    os.makedirs("m", exist_ok=True)
    out.append(attempt("mounted a tmpfs", libc.mount(b"tmpfs", b"m", b"tmpfs", 0, b"size=64g")))
    out.append(attempt("remounted its root", libc.mount(b"tmpfs", b"/", b"tmpfs", 0, b"")))
    out.append(attempt("mounted proc", libc.mount(b"proc", b"m", b"proc", 0, None)))
    out.append(attempt("unmounted its root", libc.umount2(b"/", 2)))
    fd = os.open("/", os.O_RDONLY)
    out.append(attempt("joined a namespace", libc.setns(fd, 0)))
    return out
