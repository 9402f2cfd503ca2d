# class: memory bomb
# expect: memfd and mmap memory stay bounded (RLIMIT_FSIZE per file, RLIMIT_NOFILE, RLIMIT_AS)
import mmap
import os

LIMIT = 2**30
total = 0
fds = []
while len(fds) < 10000 and total < LIMIT:
    try:
        fd = os.memfd_create("m")
    except OSError:  # EMFILE: RLIMIT_NOFILE
        break
    fds.append(fd)
    try:
        for _ in range(64):
            os.write(fd, b"x" * 2**20)
            total += 2**20
    except OSError:  # EFBIG: RLIMIT_FSIZE per file
        pass
maps = []
try:
    while total < LIMIT:
        maps.append(mmap.mmap(-1, 2**26))
        maps[-1].write(b"x" * 2**26)
        total += 2**26
except (OSError, ValueError, MemoryError):
    pass
if total >= LIMIT:
    print("ESCAPED: held", total >> 20, "MiB", flush=True)


def f(x):
    return total >> 20
