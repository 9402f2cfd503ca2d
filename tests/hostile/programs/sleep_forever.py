# class: infinite loop
# expect: killed at the wall-clock timeout, though it uses no CPU
import time


def f(x):
    time.sleep(3600)
    return x * 3 + 1
