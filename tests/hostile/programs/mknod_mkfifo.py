# class: mknod/mkfifo
# expect: no device node; FIFOs only inside its own tmpfs
import os


def f(x):
    for make in (
        lambda: os.mkfifo("__CANARY__/fifo"),
        lambda: os.mknod("__CANARY__/node", 0o600),
        lambda: os.mknod("mem", 0o20600, os.makedev(1, 1)),
        lambda: os.mknod("null", 0o20666, os.makedev(1, 3)),
    ):
        try:
            make()
        except OSError:
            continue
    if os.path.exists("mem") or os.path.exists("__CANARY__"):
        print("ESCAPED: made a device node or reached the canary", flush=True)
    os.mkfifo("own-fifo")  # allowed: its own directory
    return os.listdir(".")
