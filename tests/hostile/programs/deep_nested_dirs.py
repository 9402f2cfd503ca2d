# class: deep nested dirs
# expect: nesting stops at the inode limit; nothing recursive (or anything) in the trainer
import os

depth = 0
try:
    while depth < 200000:
        os.mkdir("d")
        os.chdir("d")
        depth += 1
        if depth == 5000:
            print("ESCAPED: nested", depth, "deep", flush=True)
except OSError:
    pass


def f(x):
    return depth
