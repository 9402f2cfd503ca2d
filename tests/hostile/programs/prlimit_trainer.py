# class: prlimit
# expect: the trainer's and the supervisor's rlimits stay
import resource

TRAINER = int("__TRAINER_PID__")


def f(x):
    out = []
    for pid in (TRAINER, 1):
        for which in (resource.RLIMIT_NOFILE, resource.RLIMIT_CPU, resource.RLIMIT_AS):
            try:
                resource.prlimit(pid, which, (1, 1))
                out.append(f"set {pid}")
            except (OSError, ValueError) as exc:
                out.append(type(exc).__name__)
    return out
