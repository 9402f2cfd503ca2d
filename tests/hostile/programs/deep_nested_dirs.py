# class: deep nested dirs
# expect: thousands deep: nothing recursive in the trainer
import os

depth = 0
try:
    while depth < 200000:
        os.mkdir("d")
        os.chdir("d")
        depth += 1
except OSError:
    pass


def f(x):
    return depth
