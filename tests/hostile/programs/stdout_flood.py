# class: output flood
# expect: stdout is bounded; the trainer reads only its head
import sys


def f(x):
    while True:
        sys.stdout.write("x" * 65536)
