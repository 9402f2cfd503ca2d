# class: memory bomb
# expect: SysV shared memory is capped to nothing
import ctypes

libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
IPC_PRIVATE, IPC_CREAT = 0, 0o1000
held = 0
for _ in range(64):
    shmid = libc.shmget(IPC_PRIVATE, 2**27, IPC_CREAT | 0o600)
    if shmid < 0:
        break
    address = libc.shmat(shmid, None, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        break
    ctypes.memset(address, 1, 2**27)
    libc.shmdt(ctypes.c_void_p(address))
    held += 2**27
    if held > 2**29:  # more than its address-space limit, in memory no rlimit counts
        print("ESCAPED: SysV shm held", held >> 20, "MiB", flush=True)
        break


def f(x):
    return held
