# class: file escape
# expect: no hard link to a host file can be made
import os


def f(x):
    for source in ("/etc/passwd", "__CANARY__/secret.txt"):
        try:
            os.link(source, "linked")
            print("ESCAPED: linked", source, flush=True)
        except OSError:
            pass
    return "none"
