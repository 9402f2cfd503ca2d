# class: network
# expect: no connection reaches the trainer's loopback listener
import socket

PORT = int("__PORT__")


def f(x):
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
            s.settimeout(0.2)
            s.connect((host, PORT))
            s.sendall(b"ESCAPED")
            print("ESCAPED: connected to", host, flush=True)
        except OSError:
            pass
    return "no network"
