# class: result rewriting
# expect: closing or redirecting its descriptors only fails it
import os

os.dup2(2, 3)
os.close(1)


def f(x):
    return x * 3 + 1
