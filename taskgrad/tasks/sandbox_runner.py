"""The trusted half of the code sandbox: builds the kernel isolation, then runs the program.

``sandbox.run_python`` starts ``python -I -S -B sandbox_runner.py REPORT_FD`` with the job (a
``marshal`` dict) on stdin, an empty environment, its own session, and stdout / stderr on
anonymous memory files of the trainer. Three processes then share the work; only the last one
ever runs untrusted code:

``launcher`` (this process, trusted, started by the trainer)
    1. imports what the program may import (``job["preload"]``) and what the runner needs, while
       the host's files are still visible: later the program sees an empty filesystem, so no
       other import can succeed;
    2. as root, drops to the unprivileged uid the trainer chose for this sandbox slot (distinct
       per concurrent sandbox), so nothing here ever runs as the trainer's root;
    3. enters a new user namespace in which that uid (or, unprivileged, the trainer's uid) is
       root, and forbids further user namespaces in it (``user.max_user_namespaces = 0``: a
       nested one would give the program capabilities, e.g. to mount an unbounded tmpfs);
    4. enters new mount, PID, network, IPC and UTS namespaces: no interface is up (no network),
       SysV IPC is capped to zero (no shared memory outside ``RLIMIT_AS``), and
    5. mounts a size- and inode-limited tmpfs (nosuid, nodev, noexec) and makes it the root
       (``pivot_root`` and a lazy unmount of the old root): no host file, no ``/proc``, no
       ``/dev``; the mounts vanish with the namespace, so nothing on the host needs cleaning;
    6. forks the supervisor (the first process of the new PID namespace) and waits for it.

``supervisor`` (PID 1 of the namespace, trusted)
    The kernel ignores signals sent to a namespace's init from inside it, and it makes itself
    non-dumpable (no ptrace, no ``process_vm_readv``), so the program cannot stop, kill or read
    it. It forks the worker, relays what the worker reports (up to ``MAX_RESULT_BYTES``) to the
    trainer through ``REPORT_FD`` (which the worker has closed: the program cannot write there),
    with a header of its own (the worker's wait status, whether it timed out), and kills the
    worker at the job's wall-clock deadline. When it exits, the kernel kills everything left in
    the namespace; the trainer kills the whole process group as a backstop.

``worker`` (PID 2, becomes untrusted)
    Closes every descriptor but stdin (empty), stdout, stderr and its pipe to the supervisor
    (fd 3); starts its own session (``kill(0)`` reaches only itself); sets rlimits (CPU, address
    space, file size, open files, no processes or threads, no core, no locked memory, no
    message queues); drops every capability (effective, permitted, inheritable, ambient and
    bounding sets, ``SECBIT_NOROOT`` locked), sets ``NO_NEW_PRIVS`` and installs a seccomp
    filter (a second layer, see ``_seccomp_program``); then runs the program, calls ``entry``
    on each input and writes each outcome as a line holding a Python literal of plain types,
    right after the call returns.

Threat model: the program is hostile and, through ``ctypes`` or any other loaded module, may
make any system call. The boundary is the kernel's (namespaces, uids, capabilities, rlimits,
seccomp), not Python: nothing here relies on the program leaving Python objects alone. The
program does control what it reports about itself (its outputs), by design: the expected
outputs never enter the sandbox, and the trainer alone compares (see ``sandbox.py``). Forged or
garbled lines therefore cannot earn more than computing the values would.

``job["isolate"]`` is False only under the explicit ``TASKGRAD_UNSAFE_CODE_EXEC=1`` opt-in on a
machine without user namespaces: steps 3-5 are skipped (the program then runs in a temporary
directory of the host, with only the uid drop, its own session and rlimits around it).

Startup cost matters (a batch of completions starts one interpreter each): the job travels in
``marshal`` and the runner uses ``posix``, both loaded at interpreter start; ``ctypes`` is the
one extra import (the namespace, mount and capability calls have no ``os`` wrappers in 3.11).
"""

import marshal
import posix
import sys

MAX_RESULT_BYTES = 1_000_000
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 1, 4, 24
PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 28, 38, 47, 4
# NOROOT (+locked): uid 0 gains no capabilities at exec; KEEP_CAPS_LOCKED; NO_CAP_AMBIENT_RAISE
# (+locked). Locked bits cannot be unset again, even by a process that kept CAP_SETPCAP.
SECUREBITS = (1 << 0) | (1 << 1) | (1 << 5) | (1 << 6) | (1 << 7)
CAPABILITY_VERSION_3 = 0x20080522
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
# Directories that exist on (nearly) every Linux host and can serve as the tmpfs mount point
# inside the private mount namespace (the host's directory is untouched).
MOUNT_POINTS = ("/tmp", "/var/tmp", "/mnt", "/dev")
EXIT_SETUP_FAILED = 70


class SetupError(Exception):
    """A step of the isolation failed: the sandbox cannot run here (reported, never ignored)."""


def main() -> None:
    report_fd = int(sys.argv[1])
    job = marshal.loads(_read_all(0))
    try:
        for name in job["preload"]:
            try:
                __import__(name)
            except ImportError as exc:
                raise SetupError(f"cannot preload {name!r}: {exc}") from None
        allowed = set(sys.modules)
        libc, resource, select = _load_runner_modules()
        # The program may import only what was preloaded: the runner's own modules go before it
        # runs (a convenience, not a boundary: the boundary assumes the program has ctypes).
        runner_only = [name for name in sys.modules if name not in allowed]
        _empty_stdin()
        if job["uid"] is not None:
            _drop_to_uid(libc, job["uid"])
        if job["isolate"]:
            _isolate(libc, job)
        else:
            posix.chdir(job["workdir"])
    except SetupError as exc:
        _write_all(report_fd, b"E " + str(exc).encode("ascii", "replace") + b"\n")
        posix._exit(EXIT_SETUP_FAILED)
    pid = posix.fork()  # with isolation: PID 1 of the new PID namespace
    if pid == 0:
        try:
            _supervise(libc, resource, select, job, report_fd, runner_only)
        finally:
            posix._exit(EXIT_SETUP_FAILED)
    posix.close(report_fd)  # the supervisor holds it: EOF for the trainer once it is done
    _, status = posix.waitpid(pid, 0)
    posix._exit(0 if posix.WIFEXITED(status) and posix.WEXITSTATUS(status) == 0 else 1)


def _load_runner_modules() -> tuple:
    try:
        import ctypes
        import resource
        import select
    except ImportError as exc:
        raise SetupError(f"the runner needs ctypes, resource and select: {exc}") from None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError as exc:
        raise SetupError(f"cannot load the C library: {exc}") from None
    return _Libc(ctypes, libc), resource, select


class _Libc:
    """The few system calls Python 3.11 has no wrapper for, raising SetupError on failure."""

    def __init__(self, ctypes: object, libc: object) -> None:
        self.ctypes, self.libc = ctypes, libc
        c_ulong = ctypes.c_ulong
        libc.prctl.argtypes = [ctypes.c_int, c_ulong, c_ulong, c_ulong, c_ulong]
        libc.mount.argtypes = [ctypes.c_char_p] * 3 + [c_ulong, ctypes.c_char_p]
        libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        libc.unshare.argtypes = [ctypes.c_int]

    def check(self, result: int, what: str) -> int:
        if result == -1:
            errno = self.ctypes.get_errno()
            raise SetupError(f"{what}: {posix.strerror(errno)}")
        return result

    def prctl(self, option: int, arg: int = 0, what: str = "prctl") -> int:
        return self.check(self.libc.prctl(option, arg, 0, 0, 0), what)

    def unshare(self, flags: int, what: str) -> None:
        self.check(self.libc.unshare(flags), what)

    def mount(self, source: bytes | None, target: bytes, fstype: bytes | None, flags: int,
              data: bytes | None, what: str) -> None:  # fmt: skip
        self.check(self.libc.mount(source, target, fstype, flags, data), what)

    def pivot_root_here(self) -> None:
        """Make the current directory (a mount point) the root and detach the old root."""
        number = SYS_PIVOT_ROOT.get(posix.uname().machine)
        if number is None:  # an architecture we have no syscall number for: chroot instead
            posix.chroot(".")
        else:
            self.check(self.libc.syscall(number, b".", b"."), "pivot_root")
            self.check(self.libc.umount2(b".", MNT_DETACH), "umount of the old root")
        posix.chdir("/")

    def drop_capabilities(self) -> None:
        """Empty every capability set for good, then NO_NEW_PRIVS. Without any capability to
        begin with (unsafe mode: no user namespace), there is nothing to drop and no right to
        change the bounding set or securebits: the check and NO_NEW_PRIVS remain."""
        if self._capabilities():
            self.prctl(PR_SET_SECUREBITS, SECUREBITS, "prctl(PR_SET_SECUREBITS)")
            cap = 0
            while self.libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:  # EINVAL past the last
                cap += 1
            if cap < 38:  # CAP_PERFMON..: any kernel of the last years has more
                raise SetupError(f"could not drop the capability bounding set (stopped at {cap})")
            self.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "prctl(PR_CAP_AMBIENT)")
            self._capabilities(clear=True)
        if self._capabilities():
            raise SetupError("capabilities remain after capset")
        self.prctl(PR_SET_NO_NEW_PRIVS, 1, "prctl(PR_SET_NO_NEW_PRIVS)")

    def _capabilities(self, *, clear: bool = False) -> bool:
        """Whether any capability is effective, permitted or inheritable (after clearing them
        all with capset if ``clear``)."""
        ct = self.ctypes

        class Header(ct.Structure):
            _fields_ = [("version", ct.c_uint32), ("pid", ct.c_int)]  # noqa: RUF012 (ctypes)

        class Data(ct.Structure):
            _fields_ = [(n, ct.c_uint32) for n in ("effective", "permitted", "inheritable")]  # noqa: RUF012

        header, data = Header(CAPABILITY_VERSION_3, 0), (Data * 2)()
        if clear:
            self.check(self.libc.capset(ct.byref(header), data), "capset")
        self.check(self.libc.capget(ct.byref(header), data), "capget")
        return any(getattr(d, n) for d in data for n in ("effective", "permitted", "inheritable"))

    def install_seccomp(self) -> None:
        """The seccomp filter of ``_seccomp_program``; skipped on architectures it does not
        know (the namespaces, uid and capabilities above are the boundary without it)."""
        program = _seccomp_program(posix.uname().machine)
        if program is None:
            return
        ct = self.ctypes
        code = b"".join(_pack_filter(*instruction) for instruction in program)
        buffer = ct.create_string_buffer(code, len(code))

        class Program(ct.Structure):
            _fields_ = [("len", ct.c_ushort), ("filter", ct.c_void_p)]  # noqa: RUF012 (ctypes)

        fprog = Program(len(program), ct.addressof(buffer))
        self.check(
            self.libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ct.addressof(fprog), 0, 0),
            "prctl(PR_SET_SECCOMP)",
        )


# -- seccomp -------------------------------------------------------------------------------------
# A second layer, for what the namespaces leave to the program against its own sandbox (e.g.
# lowering its supervisor's rlimits: same uid) and for kernel attack surface it has no use for.
# Each entry: system call numbers on x86_64 and aarch64 (None: no such call there).
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_DENY = {  # refused with EPERM
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "kcmp": (312, 272),
    "pidfd_open": (434, 434),
    "pidfd_send_signal": (424, 424),
    "pidfd_getfd": (438, 438),
    "unshare": (272, 97),
    "setns": (308, 268),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "personality": (135, 92),
    "shmget": (29, 194),
    "msgget": (68, 186),
    "semget": (64, 190),
    "ioprio_set": (251, 30),
}
_SELF_ONLY = {  # allowed when the pid argument (index) is 0, i.e. the calling process
    "prlimit64": ((302, 261), 0),
    "sched_setaffinity": ((203, 122), 0),
    "sched_setscheduler": ((144, 119), 0),
    "sched_setparam": ((142, 118), 0),
    "sched_setattr": ((314, 274), 0),
    "setpriority": ((141, 140), 1),
}
_CLONE, _CLONE3 = (56, 220), (435, 435)
# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | NEWPID | NEWNET
_NAMESPACE_FLAGS = 0x7E020000
_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _KILL_PROCESS, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_EPERM, _ENOSYS = 1, 38


def _seccomp_program(machine: str) -> list | None:
    """A classic-BPF filter as (code, jt, jf, k) tuples, or None for an unknown architecture."""
    if machine not in _AUDIT_ARCH:
        return None
    column = 0 if machine == "x86_64" else 1
    arg_low = 16  # offset of args[0] in struct seccomp_data; low word first (little endian)
    prog = [
        (_LD_W_ABS, 0, 0, 4),  # arch: a foreign ABI (e.g. int 0x80) would renumber everything
        (_JEQ, 1, 0, _AUDIT_ARCH[machine]),
        (_RET, 0, 0, _KILL_PROCESS),
        (_LD_W_ABS, 0, 0, 0),  # the system call number
    ]
    if machine == "x86_64":  # x32 calls carry bit 30 and their own numbering
        prog += [(_JGE, 0, 1, 0x40000000), (_RET, 0, 0, _ERRNO | _ENOSYS)]
    for numbers in _DENY.values():
        prog += [(_JEQ, 0, 1, numbers[column]), (_RET, 0, 0, _ERRNO | _EPERM)]
    # clone3 passes its flags in memory, out of a filter's reach: ENOSYS makes libc use clone.
    prog += [(_JEQ, 0, 1, _CLONE3[column]), (_RET, 0, 0, _ERRNO | _ENOSYS)]
    prog += [
        (_JEQ, 0, 4, _CLONE[column]),
        (_LD_W_ABS, 0, 0, arg_low),
        (_JSET, 0, 1, _NAMESPACE_FLAGS),
        (_RET, 0, 0, _ERRNO | _EPERM),
        (_RET, 0, 0, _ALLOW),
    ]
    for numbers, index in _SELF_ONLY.values():
        prog += [
            (_JEQ, 0, 4, numbers[column]),
            (_LD_W_ABS, 0, 0, arg_low + 8 * index),  # pids are ints: the low word is the pid
            (_JEQ, 0, 1, 0),
            (_RET, 0, 0, _ALLOW),
            (_RET, 0, 0, _ERRNO | _EPERM),
        ]
    prog.append((_RET, 0, 0, _ALLOW))
    return prog


def _pack_filter(code: int, jt: int, jf: int, k: int) -> bytes:
    """struct sock_filter: u16 code, u8 jt, u8 jf, u32 k (native byte order)."""
    return code.to_bytes(2, sys.byteorder) + bytes((jt, jf)) + k.to_bytes(4, sys.byteorder)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := posix.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes, write: object = posix.write) -> None:
    # ``write`` is bound at definition: the program may replace ``posix.write`` or ``len``.
    view = memoryview(data)
    while view:
        view = view[write(fd, view) :]


def _empty_stdin() -> None:
    """Replace the job on stdin by an empty stream (the program reads EOF)."""
    r, w = posix.pipe()
    posix.close(w)
    posix.dup2(r, 0)
    posix.close(r)


def _drop_to_uid(libc: _Libc, uid: int) -> None:
    try:
        posix.setgroups([])
        posix.setresgid(uid, uid, uid)
        posix.setresuid(uid, uid, uid)
    except OSError as exc:
        raise SetupError(
            f"cannot switch to sandbox uid {uid}: {exc.strerror} (root inside a user namespace "
            "that does not map it? run the trainer as an ordinary user, or set "
            "TASKGRAD_SANDBOX_UID_BASE to a range mapped there)"
        ) from None
    # A uid change makes the process non-dumpable, which makes /proc/self/* root's: we could no
    # longer write our own uid_map. The supervisor turns this off again before the program runs.
    libc.prctl(PR_SET_DUMPABLE, 1, "prctl(PR_SET_DUMPABLE)")


def _write_proc(path: str, text: str, *, required: bool = True) -> None:
    try:
        fd = posix.open(path, posix.O_WRONLY)
        try:
            posix.write(fd, text.encode())
        finally:
            posix.close(fd)
    except OSError as exc:
        if required:
            raise SetupError(f"cannot write {path}: {exc.strerror}") from None


def _isolate(libc: _Libc, job: dict) -> None:
    uid, gid = posix.geteuid(), posix.getegid()
    libc.unshare(CLONE_NEWUSER, "unshare(CLONE_NEWUSER)")
    _write_proc("/proc/self/setgroups", "deny")
    _write_proc("/proc/self/uid_map", f"0 {uid} 1")
    _write_proc("/proc/self/gid_map", f"0 {gid} 1")
    # Limits of this user namespace (the files show the namespace of the writer): no nested user
    # namespace, ever. The others follow once ours exist.
    _write_proc("/proc/sys/user/max_user_namespaces", "0")
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    libc.unshare(flags, "unshare(mount, pid, net, ipc, uts namespaces)")
    for kind in ("mnt", "pid", "net", "ipc", "uts", "cgroup", "time"):
        _write_proc(f"/proc/sys/user/max_{kind}_namespaces", "0", required=False)
    # SysV IPC memory lives outside RLIMIT_AS: none in this IPC namespace. Per-namespace and
    # writable here on kernels >= 5.19 (older ones keep the host values: best effort).
    for name, value in (("shmall", "0"), ("shmmni", "0"), ("msgmni", "0"), ("sem", "0 0 0 0")):
        _write_proc(f"/proc/sys/kernel/{name}", value, required=False)
    libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None, "making / private")
    options = f"size={job['disk_bytes']},nr_inodes={job['disk_inodes']},mode=0700".encode()
    for target in MOUNT_POINTS:
        if posix.access(target, posix.F_OK):
            break
    else:
        raise SetupError(f"no mount point for the sandbox tmpfs among {', '.join(MOUNT_POINTS)}")
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    libc.mount(b"tmpfs", target.encode(), b"tmpfs", flags, options, "mounting the tmpfs")
    posix.chdir(target)
    libc.pivot_root_here()


def _supervise(libc: _Libc, resource: object, select: object, job: dict, report_fd: int,
               runner_only: list) -> None:  # fmt: skip
    """PID 1: run the worker, relay its report with a header of our own, enforce the deadline."""
    import time  # a built-in module: loaded at startup, no file needed

    libc.prctl(PR_SET_PDEATHSIG, 9)  # the trainer killing the launcher kills us, and so all
    libc.prctl(PR_SET_DUMPABLE, 0)  # no ptrace, no process_vm_readv by the program
    r, w = posix.pipe()
    pid = posix.fork()
    if pid == 0:
        try:
            posix.close(r)
            posix.close(report_fd)
            _work(libc, resource, job, w, runner_only)
        finally:
            posix._exit(EXIT_SETUP_FAILED)
    posix.close(w)
    deadline = time.monotonic() + job["timeout_s"]
    poller = select.poll()
    poller.register(r, select.POLLIN)
    data, timed_out, overflow = bytearray(), 0, 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = 1
            break
        if not poller.poll(remaining * 1000):
            continue  # the loop re-checks the deadline
        chunk = posix.read(r, 65536)
        if not chunk:
            break  # EOF: the worker exited (it cannot have children)
        data += chunk
        if len(data) > MAX_RESULT_BYTES:
            overflow = 1
            del data[MAX_RESULT_BYTES:]
            break
    if timed_out or overflow:
        posix.kill(pid, 9)
    _, status = posix.waitpid(pid, 0)
    header = b"R %d %d %d %d\n" % (status, timed_out, overflow, len(data))
    try:
        _write_all(report_fd, header + bytes(data))
    finally:
        posix._exit(0)


def _work(libc: _Libc, resource: object, job: dict, out_fd: int, runner_only: list) -> None:
    """PID 2: confine this process for good, then run the untrusted program in it."""
    try:
        if out_fd != 3:
            posix.dup2(out_fd, 3)
            posix.close(out_fd)
        posix.closerange(4, 1 << 20)
        libc.prctl(PR_SET_PDEATHSIG, 9)  # unsafe mode has no PID namespace to end it with us
        # Its own session and process group: kill(0, ...) and killpg reach only this process,
        # not the launcher's group (which the trainer kills as a whole at the deadline).
        posix.setsid()
        _limit(resource, job["limits"])
        libc.drop_capabilities()
        if job["seccomp"]:
            libc.install_seccomp()
    except (SetupError, OSError, ValueError) as exc:
        _write_all(3, b"!setup " + str(exc).encode("ascii", "replace") + b"\n")
        posix._exit(EXIT_SETUP_FAILED)
    for name in runner_only:
        sys.modules.pop(name, None)
    del libc, resource
    _run(job["program"], job["entry"], job["inputs"])


def _limit(resource: object, limits: dict) -> None:
    cpu = limits["cpu_s"]
    for which, soft, hard in (
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL at the hard
        (resource.RLIMIT_AS, limits["memory_bytes"], limits["memory_bytes"]),
        (resource.RLIMIT_FSIZE, limits["file_bytes"], limits["file_bytes"]),
        (resource.RLIMIT_NOFILE, limits["open_files"], limits["open_files"]),
        # No fork, no thread. The count is per user, and this user runs the launcher and the
        # supervisor already, so any limit below 2 refuses every new process.
        (resource.RLIMIT_NPROC, 0, 0),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_MEMLOCK, 0, 0),
        (resource.RLIMIT_MSGQUEUE, 0, 0),
        (resource.RLIMIT_RTPRIO, 0, 0),
    ):
        resource.setrlimit(which, (soft, hard))


def _run(program: str, entry: str, inputs: list) -> None:
    """Execute the program, then the calls; each outcome is written before the program runs
    again. Exceptions are recorded by type name. Never returns."""
    # Bound before the program runs: it may replace builtins and module attributes.
    run, compile_, plain, error_name, to_text = exec, compile, _make_plain(), _error_name, ascii
    write_all, exit_now = _write_all, posix._exit

    def report(outcome: object) -> None:
        write_all(3, to_text(outcome).encode("ascii") + b"\n")

    namespace = {"__name__": "__sandbox__", "__builtins__": __builtins__}
    try:
        run(compile_(program, "<program>", "exec"), namespace)
        report("")
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: the program is hostile
        report(error_name(exc))
        exit_now(0)
    function = namespace.get(entry)
    for args in inputs:
        if function is None:
            report((False, "NameError"))
            continue
        try:
            outcome = plain(function(*args))
        except BaseException as exc:
            outcome = (False, error_name(exc))
        report(outcome)
    try:  # the program's own prints, after the outcomes are out: a hostile stdout may misbehave
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        exit_now(0)  # skip interpreter shutdown: no untrusted __del__ or atexit code runs after


def _error_name(exc: BaseException, _type: type = type, _str: type = str) -> str:
    try:
        name = _type(exc).__name__  # a metaclass could make even this run program code
        return name if _type(name) is _str and len(name) < 100 else "Exception"
    except BaseException:
        return "Exception"


_MAX_NODES = 10_000
_MAX_STR = 10_000
_MAX_INT_BITS = 4_096


def _make_plain() -> object:
    """A function mapping a returned value to ``(True, copy)`` if it is built only from exact
    JSON-like types (tuples become lists), else ``(False, reason)``. Exact ``type() is`` checks,
    never ``isinstance`` or ``==``: a subclass could override ``__eq__`` or ``__iter__`` and run
    program code while we look. Builtins are bound now, before the program can replace them.
    (A program that subverts this anyway only misreports its own outputs; the trainer validates
    them again, and compares them, outside.)"""
    _type, _len, _bool, _int, _float, _str = type, len, bool, int, float, str
    _list, _tuple, _dict, _error = list, tuple, dict, ValueError
    max_nodes, max_str, max_int_bits = _MAX_NODES, _MAX_STR, _MAX_INT_BITS

    def copy(x: object, depth: int, budget: list) -> object:
        budget[0] -= 1
        if budget[0] < 0 or depth > 50:
            raise _error("output too large or too deep")
        t = _type(x)
        if x is None or t is _bool:
            return x
        if t is _int:
            if x.bit_length() > max_int_bits:
                raise _error("integer too large")
            return x
        if t is _float:
            if x - x != 0.0:  # inf or nan: no Python literal for them
                raise _error("non-finite float")
            return x
        if t is _str:
            if _len(x) > max_str:
                raise _error("string too long")
            return x
        if t is _list or t is _tuple:
            return [copy(item, depth + 1, budget) for item in x]
        if t is _dict:
            out = {}
            for key, item in x.items():
                if _type(key) is not _str:
                    raise _error("dict key is not a str")
                out[key] = copy(item, depth + 1, budget)
            return out
        raise _error("unsupported output type")

    def plain(value: object) -> tuple:
        try:
            return (True, copy(value, 0, [max_nodes]))
        except _error as exc:
            return (False, exc.args[0])

    return plain


if __name__ == "__main__":
    main()
