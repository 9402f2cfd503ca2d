# class: limit reset
# expect: rlimits cannot be raised again; the loop still dies
import resource

raised = []
for which in (resource.RLIMIT_CPU, resource.RLIMIT_AS, resource.RLIMIT_NPROC,
              resource.RLIMIT_NOFILE, resource.RLIMIT_FSIZE):  # fmt: skip
    try:
        resource.setrlimit(which, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        raised.append(which)
    except (OSError, ValueError):
        pass
if raised:
    print("ESCAPED: raised rlimits", raised, flush=True)


def f(x):
    while True:
        pass
