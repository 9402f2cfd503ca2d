"""The trusted half of the sandbox: the script the sandboxed interpreter runs around the program.

``sandbox.run_python`` starts ``python -I -S -B sandbox_runner.py`` in a fresh temporary
directory that holds ``job.marshal`` (written by the parent). This script, still trusted, then

1. imports the allow-listed modules (``job["preload"]``): no other import succeeds later;
2. isolates itself: a new network namespace (as root: ``unshare(CLONE_NEWNET)``; otherwise
   ``CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET`` where user namespaces are allowed), ``chroot``
   into the temporary directory when that worked, and, as root, drops to uid/gid 65534 (nobody);
3. sets resource limits (CPU, address space, file size, open files, no new processes, no core);
4. installs an audit hook that denies process creation, sockets, ctypes, imports, frame and
   code introspection, and file access outside the temporary directory;
5. runs the untrusted program, calls ``job["entry"]`` on each input, runs each assert, and
   writes the outcomes as a Python literal of plain types to ``result.txt``.

The parent, not this script, decides whether the outputs are right: the expected outputs never
enter the sandbox, so printing "PASS", exiting early or forging ``result.txt`` cannot earn a
pass. Startup cost matters (a batch of completions runs one interpreter each), so the runner
reads its job with ``marshal`` and uses ``posix``, both loaded at startup, instead of ``json``
and ``os``; it costs ~20 ms in all.

Steps 1-3 are done here rather than in a ``preexec_fn``: ``preexec_fn`` is unsafe when the parent
has threads (rewards run in a thread pool inside a multi-threaded trainer) and prevents the
cheap ``vfork`` spawn path, which matters when the parent holds gigabytes of model weights.
"""

import builtins
import marshal
import posix
import sys

NOBODY = 65534
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

# Audit events denied outright, by prefix. "os." events are denied unless listed in
# _PATH_EVENTS (then their paths must lie inside the sandbox), which covers os.system,
# os.exec, os.fork, os.posix_spawn, os.kill, os.chdir, os.symlink, os.link, os.chown, ...
_DENIED_PREFIXES = (
    "os.",
    "subprocess.",
    "socket.",
    "ctypes.",
    "import",  # modules not preloaded cannot be imported (imports of loaded ones raise no event)
    "object.__",  # frame/code attribute access and function __code__/__defaults__ assignment
    "sys._getframe",
    "sys._current_frames",
    "sys.settrace",  # a tracer sees every frame, including this runner's
    "sys.setprofile",
    "sys.addaudithook",
    "gc.",
    "function.__new__",
    "code.__new__",
    "marshal.",
    "mmap.",
    "fcntl.",
    "pty.",
    "resource.",
    "shutil.",
    "cpython.",
    "_posixsubprocess.",
    "webbrowser.",
)
# os events allowed on paths inside the sandbox: event -> (number of path arguments, index of
# the first dir_fd argument or None). A dir_fd would resolve a relative path somewhere else.
_PATH_EVENTS = {
    "os.listdir": (1, None),
    "os.scandir": (1, None),
    "os.mkdir": (1, 2),
    "os.rmdir": (1, 1),
    "os.remove": (1, 1),
    "os.rename": (2, 2),
    "os.truncate": (1, None),
    "os.chmod": (1, 2),
    "os.utime": (1, 3),
}
_WRITE_FLAGS = posix.O_WRONLY | posix.O_RDWR | posix.O_CREAT | posix.O_APPEND | posix.O_TRUNC


def main() -> None:
    with open("job.marshal", "rb") as fh:
        job = marshal.load(fh)
    posix.unlink("job.marshal")
    # Opened before isolation (an unmapped user namespace cannot create files) and before the
    # guard (so the runner's own write needs no exception in it).
    result_file = open("result.txt", "w", encoding="ascii")  # noqa: SIM115
    import resource  # both are files on disk: import them before the chroot

    try:
        import ctypes

        unshare = ctypes.CDLL(None, use_errno=True).unshare
    except Exception:  # no ctypes or libc: the audit hook still blocks sockets
        unshare = None
    for name in job["preload"]:
        __import__(name)
    root = _isolate(unshare, as_root=job["as_root"], namespaces=job["namespaces"])
    _limit(resource, job["limits"])
    _install_guard(root, job["max_write_files"])
    # Bound before the program runs: it may replace builtins and this module's globals.
    write, to_text, exit_now = result_file.write, ascii, posix._exit
    outcome = _run(job["program"], job["entry"], job["inputs"], job["asserts"])
    result_file.seek(0)
    result_file.truncate()
    write(to_text(outcome))
    result_file.flush()
    try:  # the program's own prints, after the result is safe: a hostile stdout may misbehave
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        exit_now(0)  # skip interpreter shutdown: no untrusted __del__ or atexit code runs after


def _isolate(unshare: object, *, as_root: bool, namespaces: bool) -> str:
    """Network namespace, chroot, privilege drop; returns the sandbox directory as now seen.

    Namespaces and chroot are best effort (a container may refuse them; the audit hook still
    guards). The privilege drop is not: a root that cannot become nobody fails loudly (in
    ``run_python``'s self-test) rather than run programs as root."""
    root = posix.getcwd()
    if unshare is None:
        namespaces = False
    if as_root:
        if namespaces:
            unshare(CLONE_NEWNET)
            root = _chroot_here(root)
        posix.setgroups([])
        posix.setgid(NOBODY)
        posix.setuid(NOBODY)
        return root
    uid, gid = posix.geteuid(), posix.getegid()
    if not namespaces or unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET) != 0:
        return root  # user namespaces disabled: no chroot, the audit hook guards paths
    try:
        # Map our ids into the new user namespace so that files we create are still ours.
        maps = (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1"))
        for name, text in maps:
            with open(f"/proc/self/{name}", "w") as fh:
                fh.write(text)
    except OSError:
        return root
    return _chroot_here(root)


def _chroot_here(root: str) -> str:
    try:
        posix.chroot(".")
        posix.chdir("/")
        return "/"
    except OSError:
        return root


def _limit(resource: object, limits: dict) -> None:
    cpu = limits["cpu_s"]
    for which, soft, hard in (
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL at the hard
        (resource.RLIMIT_AS, limits["memory_bytes"], limits["memory_bytes"]),
        (resource.RLIMIT_FSIZE, limits["file_bytes"], limits["file_bytes"]),
        (resource.RLIMIT_NOFILE, limits["open_files"], limits["open_files"]),
        (resource.RLIMIT_NPROC, 0, 0),  # no fork, no thread: nothing untrusted runs concurrently
        (resource.RLIMIT_CORE, 0, 0),
    ):
        resource.setrlimit(which, (soft, hard))


def _install_guard(root: str, max_write_files: int) -> None:
    """Install the audit hook. Everything it uses is bound here, in its closure, because the
    untrusted program may later replace builtins and module attributes; it cannot reach this
    closure, since frame, code, tracing and gc introspection are denied."""
    _type, _str, _bytes, _int, _len = type, str, bytes, int, len
    _decode = bytes.decode
    _error = PermissionError
    denied_prefixes = _DENIED_PREFIXES
    path_events = dict(_PATH_EVENTS)
    write_flags = _WRITE_FLAGS
    root_parts = tuple(part for part in root.split("/") if part)
    n_root = _len(root_parts)
    writes = 0

    def inside(path: object) -> bool:
        if _type(path) is _bytes:
            path = _decode(path, "utf-8", "surrogateescape")
        if _type(path) is not _str or "\x00" in path:
            return False
        if not path.startswith("/"):
            path = root + "/" + path  # relative to the cwd, which cannot change (os.chdir denied)
        parts = []
        for part in path.split("/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part and part != ".":
                parts.append(part)
        # Lexical check: sound because symlinks and hard links cannot be created.
        return _len(parts) >= n_root and tuple(parts[:n_root]) == root_parts

    def hook(event: str, args: tuple) -> None:
        nonlocal writes
        if event == "open":
            path, mode, flags = args
            if _type(path) is _int:
                return  # an already-open descriptor
            if mode is None or not inside(path):  # mode None: os.open, which may take a dir_fd
                raise _error("sandbox: open outside the sandbox directory is not allowed")
            if flags & write_flags:
                writes += 1  # each file is bounded by RLIMIT_FSIZE; this bounds their number
                if writes > max_write_files:
                    raise _error("sandbox: too many files opened for writing")
            return
        spec = path_events.get(event)
        if spec is not None:
            n_paths, dir_fd_at = spec
            for path in args[:n_paths]:
                if path is not None and _type(path) is not _int and not inside(path):
                    raise _error(f"sandbox: {event} outside the sandbox directory is not allowed")
            if dir_fd_at is not None:
                for dir_fd in args[dir_fd_at:]:
                    if dir_fd is not None and dir_fd != -1:
                        raise _error(f"sandbox: {event} with dir_fd is not allowed")
            return
        if event.startswith(denied_prefixes):
            raise _error(f"sandbox: {event} is not allowed")

    sys.addaudithook(hook)


def _run(program: str, entry: str, inputs: list, asserts: list) -> dict:
    """Execute the program, then the calls and asserts; exceptions are recorded by type name."""
    # Bound before the program runs (it may replace builtins and this module's globals); if it
    # breaks something anyway, the runner dies without a result, which is a fail, never a pass.
    run, compile_, plain, error_name = exec, compile, _make_plain(), _error_name
    namespace = {"__name__": "__sandbox__", "__builtins__": builtins}
    try:
        run(compile_(program, "<program>", "exec"), namespace)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: the program is hostile
        return {"error": error_name(exc)}
    function = namespace.get(entry)
    outputs = []
    for args in inputs:
        if function is None:
            outputs.append((False, "NameError"))
            continue
        try:
            outputs.append(plain(function(*args)))
        except BaseException as exc:
            outputs.append((False, error_name(exc)))
    checks = []
    for source in asserts:
        try:
            run(compile_(source, "<test>", "exec"), namespace)
            checks.append((True, ""))
        except BaseException as exc:
            checks.append((False, error_name(exc)))
    return {"error": "", "outputs": outputs, "checks": checks}


def _error_name(exc: BaseException, _type: type = type, _str: type = str) -> str:
    try:
        name = _type(exc).__name__  # a metaclass could make even this run program code
        return name if _type(name) is _str else "Exception"
    except BaseException:
        return "Exception"


_MAX_NODES = 10_000
_MAX_STR = 10_000
_MAX_INT_BITS = 4_096


def _make_plain() -> object:
    """A function mapping a returned value to ``(True, copy)`` if it is built only from exact
    JSON-like types (tuples become lists), else ``(False, reason)``. Exact ``type() is`` checks,
    never ``isinstance`` or ``==``: a subclass could override ``__eq__`` or ``__iter__`` and run
    program code while we look. Builtins are bound now, before the program can replace them."""
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
