# class: inode flood
# expect: file creation stops at the tmpfs inode limit (1024)
import os

made = 0
try:
    while made < 10**6:
        os.close(os.open(f"e{made}", os.O_CREAT | os.O_WRONLY))
        made += 1
        if made == 5000:
            print("ESCAPED: created", made, "files", flush=True)
except OSError:
    pass


def f(x):
    return made
