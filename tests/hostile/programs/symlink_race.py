# class: symlink race
# expect: links to the trainer's files lead nowhere; nobody follows
import os

for i in range(200):
    for name, target in (
        ("result.txt", "__CANARY__/secret.txt"),
        ("stdout.txt", "/etc/passwd"),
        ("job.marshal", "__CANARY__"),
    ):
        try:
            os.symlink(target, f"{name}.{i}")
            os.rename(f"{name}.{i}", name)
        except OSError:
            pass


def f(x):
    try:
        with open("result.txt") as fh:
            print("ESCAPED: followed a link out:", fh.read(), flush=True)
    except OSError:
        pass
    return os.readlink("result.txt")
