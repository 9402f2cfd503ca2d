# class: memory bomb
# expect: growing allocations stop at RLIMIT_AS
chunks = []
while True:
    chunks.append(b"x" * 10**7)


def f(x):
    return len(chunks)
