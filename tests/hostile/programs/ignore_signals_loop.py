# class: infinite loop
# expect: SIGXCPU/SIGTERM ignored: SIGKILL at the deadline
import signal

for name in ("SIGXCPU", "SIGTERM", "SIGALRM", "SIGINT", "SIGHUP"):
    signal.signal(getattr(signal, name), signal.SIG_IGN)


def f(x):
    while True:
        pass
