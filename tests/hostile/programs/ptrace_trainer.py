# class: ptrace
# expect: no ptrace of the trainer or the supervisor
import ctypes

TRAINER = int("__TRAINER_PID__")
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PTRACE_ATTACH, PTRACE_SEIZE = 16, 0x4206


def f(x):
    out = []
    for pid in (TRAINER, 1):
        for request in (PTRACE_ATTACH, PTRACE_SEIZE):
            if libc.ptrace(request, pid, None, None) == 0:
                print("ESCAPED: traced", pid, flush=True)
            out.append(ctypes.get_errno())
    return out
