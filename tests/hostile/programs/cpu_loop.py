# class: infinite loop
# expect: killed at the timeout; reward 0
while True:
    pass


def f(x):
    return x * 3 + 1
