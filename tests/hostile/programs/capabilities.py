# class: privileges
# expect: no capability, no_new_privs set, cannot regain either
import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)


class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]  # fmt: skip


def f(x):
    header, data = Header(0x20080522, 0), (Data * 2)()
    full = (Data * 2)(Data(0xFFFFFFFF, 0xFFFFFFFF, 0), Data(0xFF, 0xFF, 0))
    libc.capset(ctypes.byref(header), full)
    libc.capget(ctypes.byref(header), data)
    caps = [d.effective | d.permitted for d in data]
    for setter in (lambda: os.setuid(0), lambda: os.setgid(0), lambda: os.setgroups([0])):
        try:  # noqa: SIM105 (contextlib is not importable in the sandbox)
            setter()
        except OSError:
            pass
    if any(caps):
        print("ESCAPED: capabilities", caps, flush=True)
    return [caps, libc.prctl(39, 0, 0, 0, 0)]  # PR_GET_NO_NEW_PRIVS
