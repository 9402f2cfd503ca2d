# class: file escape
# expect: no host file is visible
def f(x):
    for path in ("/etc/passwd", "/etc/shadow", "/../../etc/passwd", "../../../../etc/hostname"):
        try:
            with open(path) as fh:
                print("ESCAPED: read", path, fh.read(40), flush=True)
        except OSError:
            pass
    return "nothing"
