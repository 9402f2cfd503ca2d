# class: memory bomb
# expect: memfd, mmap and tmpfs memory stay bounded (RLIMIT_FSIZE/NOFILE/AS, tmpfs size)
import mmap
import os

total = 0
fds = []
while len(fds) < 10000:
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
    while True:
        maps.append(mmap.mmap(-1, 2**26))
        maps[-1].write(b"x" * 2**26)
        total += 2**26
except (OSError, ValueError, MemoryError):
    pass
if total > 2**30:
    print("ESCAPED: held", total >> 20, "MiB", flush=True)


def f(x):
    return total >> 20
