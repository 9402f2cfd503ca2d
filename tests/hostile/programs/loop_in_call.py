# class: infinite loop
# expect: killed at the timeout (inside a call)
def f(x):
    while True:
        x += 1
