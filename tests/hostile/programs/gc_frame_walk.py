# class: introspection
# expect: walking frames and the heap finds no expected output
import gc
import sys

found = []
for obj in gc.get_objects():
    if type(obj) is list and obj == [7, 16, -2]:
        found.append("expected outputs")
    if type(obj) is dict and "outputs" in obj and obj is not globals():
        found.append("a dict with outputs")
frame = sys._getframe()
while frame is not None:
    frame.f_globals.setdefault("_make_plain", None)
    frame = frame.f_back
if found:
    print("ESCAPED: found", found, flush=True)


def f(x):
    return 7
