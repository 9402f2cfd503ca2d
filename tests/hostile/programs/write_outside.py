# class: file escape
# expect: nothing outside its tmpfs is written
import os

targets = [
    "__CANARY__/pwned",
    "__CANARY__/../taskgrad-hostile-pwned",
    "/tmp/taskgrad-hostile-pwned",
    "../../../../__CANARY__/pwned2",
]


def f(x):
    for path in targets:
        try:
            with open(path, "w") as fh:
                fh.write("pwned")
            if os.path.exists("__CANARY__"):
                print("ESCAPED: wrote", path, flush=True)
        except OSError:
            pass
        try:
            os.rename("__CANARY__/secret.txt", "stolen")
            print("ESCAPED: moved the canary", flush=True)
        except OSError:
            pass
    return "done"
