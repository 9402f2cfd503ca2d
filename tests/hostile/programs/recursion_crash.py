# class: crash
# expect: a segfault of the program is its own failure only
import sys

sys.setrecursionlimit(10**7)


def deep(n):
    return deep(n + 1) + 1


def f(x):
    return deep(0)
