# class: file escape
# expect: the trainer's files (the canary) stay unreadable
TRAINER = int("__TRAINER_PID__")
paths = [
    "__CANARY__/secret.txt",
    f"/proc/{TRAINER}/root__CANARY__/secret.txt",
    f"/proc/{TRAINER}/cwd",
    "/proc/1/root__CANARY__/secret.txt",
]


def f(x):
    found = []
    for path in paths:
        try:
            with open(path) as fh:
                found.append(fh.read())
                print("ESCAPED: read", path, flush=True)
        except OSError:
            pass
    return found
