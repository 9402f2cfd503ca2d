# class: import tricks
# expect: raw libc access changes nothing (the boundary is the kernel)
import ctypes

libc = ctypes.CDLL(None, use_errno=True)


def f(x):
    libc.setuid(0)
    libc.chdir(b"/..")
    libc.sethostname(b"pwned", 5)
    fd = libc.open(b"/etc/passwd", 0)
    if fd >= 0:
        print("ESCAPED: opened /etc/passwd", flush=True)
    return [fd, ctypes.get_errno()]
