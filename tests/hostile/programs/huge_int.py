# class: lying objects
# expect: ints beyond 4096 bits are refused; nothing in the trainer hangs
def f(x):
    if x == 2:
        return 10**100000
    return 1 << 4000
