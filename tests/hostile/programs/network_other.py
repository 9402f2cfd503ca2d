# class: network
# expect: no UDP, no abstract socket, no way to bring an interface up
import fcntl
import socket
import struct

PORT = int("__PORT__")


def f(x):
    try:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.sendto(b"ESCAPED", ("127.0.0.1", PORT))
    except OSError:
        pass
    try:
        a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        a.connect("\0taskgrad-hostile-__PORT__")
        print("ESCAPED: reached the trainer's abstract socket", flush=True)
    except OSError:
        pass
    try:  # SIOCSIFFLAGS: set lo up (needs CAP_NET_ADMIN over the namespace)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", 1))
        t = socket.create_connection(("127.0.0.1", PORT), timeout=0.2)
        t.sendall(b"ESCAPED")
        print("ESCAPED: brought lo up and connected", flush=True)
    except OSError:
        pass
    return "no network"
