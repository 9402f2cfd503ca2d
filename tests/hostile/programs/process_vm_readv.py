# class: ptrace
# expect: no reading of another process's memory
import ctypes

TRAINER = int("__TRAINER_PID__")
libc = ctypes.CDLL(None, use_errno=True)


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def f(x):
    buffer = ctypes.create_string_buffer(4096)
    local = IoVec(ctypes.addressof(buffer), 4096)
    out = []
    for pid in (TRAINER, 1):
        for address in (0x400000, 0x555555554000):
            remote = IoVec(address, 4096)
            n = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
            if n > 0:
                print("ESCAPED: read", n, "bytes of", pid, flush=True)
            out.append(ctypes.get_errno())
    return out
