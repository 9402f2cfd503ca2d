# class: disk fill
# expect: its tmpfs fills at its size limit (16 MiB); the host disk is untouched
import errno

written = 0
for i in range(100000):
    try:
        with open(f"fill{i}", "wb") as fh:
            for _ in range(64):
                fh.write(b"x" * 2**20)
                written += 2**20
                if written == 64 * 2**20:
                    print("ESCAPED: wrote", written >> 20, "MiB", flush=True)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:  # EFBIG (RLIMIT_FSIZE): go on with the next file
            break


def f(x):
    return written
