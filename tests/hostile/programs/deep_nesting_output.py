# class: lying objects
# expect: deep or huge outputs are refused without recursion
def f(x):
    value = []
    for _ in range(100000):
        value = [value]
    return value
