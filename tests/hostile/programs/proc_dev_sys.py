# class: file escape
# expect: no /proc, /dev or /sys at all
import os


def f(x):
    seen = []
    for path in ("/proc", "/proc/self/environ", "/proc/1/mem", "/dev/mem", "/dev/kmsg", "/sys"):
        if os.path.exists(path):
            seen.append(path)
    if seen:
        print("ESCAPED: sees", seen, flush=True)
    return seen
