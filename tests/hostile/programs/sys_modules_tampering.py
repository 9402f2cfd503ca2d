# class: import tricks
# expect: rebinding the runner's helpers forges nothing
import builtins
import sys

main = sys.modules.get("__main__")
if main is not None:
    main._make_plain = lambda: lambda value: (True, 7)
    main._write_all = lambda fd, data: None
    main.ascii = lambda value: "(True, 7)"
builtins.type = lambda value: int
builtins.ascii = lambda value: "(True, 7)"
builtins.len = lambda value: 0
sys.modules["posix"].write = lambda fd, data: len(data)


def f(x):
    return object()
