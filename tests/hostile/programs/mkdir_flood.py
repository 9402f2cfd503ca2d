# class: inode flood
# expect: mkdir stops at the inode limit (1024); the trainer has nothing to clean up
import os

made = 0
try:
    while made < 10**6:
        os.mkdir(f"d{made}")
        made += 1
        if made == 5000:
            print("ESCAPED: made", made, "directories", flush=True)
except OSError:
    pass


def f(x):
    return made
