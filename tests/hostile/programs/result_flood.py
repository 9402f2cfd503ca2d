# class: output flood
# expect: a flood of report lines is cut at the size limit
import os

line = repr((True, "z" * 9000)).encode() + b"\n"
while True:
    os.write(3, line)


def f(x):
    return x * 3 + 1
