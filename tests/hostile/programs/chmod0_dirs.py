# class: chmod-0 dirs
# expect: unreadable directories (and root) cost the trainer nothing
import os

for i in range(50):
    os.makedirs(f"a{i}/b/c", exist_ok=True)
    with open(f"a{i}/b/c/file", "w") as fh:
        fh.write("x")
    for path in (f"a{i}/b/c", f"a{i}/b", f"a{i}"):
        os.chmod(path, 0)
os.chmod("/", 0)


def f(x):
    return x * 3
