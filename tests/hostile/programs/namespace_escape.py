# class: privileges
# expect: no new namespaces, no setns, no mount
import ctypes

libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000


def f(x):
    out = []
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) == 0:
        print("ESCAPED: made a user namespace", flush=True)
        if libc.mount(b"tmpfs", b"/", b"tmpfs", 0, b"size=100g") == 0:
            print("ESCAPED: mounted an unlimited tmpfs", flush=True)
    out.append(ctypes.get_errno())
    if libc.mount(b"tmpfs", b"/", b"tmpfs", 0, b"size=100g") == 0:
        print("ESCAPED: remounted its tmpfs", flush=True)
    out.append(ctypes.get_errno())
    if libc.mount(b"proc", b"/", b"proc", 0, None) == 0:
        print("ESCAPED: mounted proc", flush=True)
    out.append(ctypes.get_errno())
    if libc.umount2(b"/", 2) == 0:
        print("ESCAPED: unmounted its root", flush=True)
    out.append(ctypes.get_errno())
    return out
