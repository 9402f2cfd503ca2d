# class: output flood
# expect: stderr is bounded; the trainer reads only its head
import os

while True:
    os.write(2, b"y" * 65536)


def f(x):
    return x * 3 + 1
