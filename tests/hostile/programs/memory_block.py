# class: memory bomb
# expect: one huge allocation fails (RLIMIT_AS)
def f(x):
    block = bytearray(2**34)
    return len(block)
