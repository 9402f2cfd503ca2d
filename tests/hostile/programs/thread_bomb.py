# class: fork bomb
# expect: no thread starts
import threading


def spin():
    while True:
        pass


def f(x):
    started = 0
    for _ in range(200):
        try:
            threading.Thread(target=spin, daemon=True).start()
            started += 1
        except RuntimeError:
            pass
    if started:
        print("ESCAPED: started", started, "threads", flush=True)
    return started
