# class: inode flood
# expect: mkdir stops at the inode limit; the trainer does no cleanup
import os

made = 0
try:
    while made < 10**6:
        os.mkdir(f"d{made}")
        made += 1
except OSError:
    pass
if made > 100000:
    print("ESCAPED: made", made, "directories", flush=True)


def f(x):
    return made
