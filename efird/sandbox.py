"""Deprivileging `efird serve` once start-up is done: --user/--group, no_new_privs and a
seccomp allow-list.

The daemon needs privilege only to start: to open (or create) the store, its lock file and
its WAL, to bind the vhost-user and control sockets and to write the pidfile. After that
it only reads and writes descriptors it already holds, maps the guest memory the VMM
passes it over the socket and accepts the next VMM connection. So, in this order, right
before it announces readiness (`efird/cli/daemon.py`):

1. `preload()` imports every module the serving path would otherwise import lazily (the
   PKCS#7 stack on the first authenticated write, `efird vars` support on the first
   vars-* control request, ...) and looks up the text codecs it uses: once files can no
   longer be opened, a late import would fail.
2. `prepare_sqlite()` keeps SQLite's temporary data in memory, seeds its random number
   generator from /dev/urandom and fsyncs the store's directory: the three things SQLite
   would otherwise open a file for later.
3. `hand_over()` gives the files efird created and removes at exit (its listening
   sockets, the pidfile) to --user/--group; `drop_privileges()` then switches to them
   (setgroups([]), setgid, setuid) and checks that root cannot be regained.
4. `set_no_new_privs()`: nothing the process executes can gain privileges (set-uid
   binaries, file capabilities).
5. `install_seccomp(serving_policy(...))` installs the allow-list below on every thread.
   A system call outside it fails with EPERM instead of running, so a refused call is
   an error the daemon logs (and survives), never a silent kill.

The allow-list is what the serving daemon does, derived from `strace -f` of the daemon
under the lifecycle, live-vars, serve, vhost and QEMU test suites and from reading the
code: trio's epoll loop, read/write/pread/pwrite on open descriptors, recvmsg/sendmsg
(SCM_RIGHTS) and accept4 on the sockets it listens on, mmap/munmap of the guest memory
the VMM passes (never executable), fdatasync/fsync/ftruncate/fcntl/flock for SQLite,
futex and thread-style clone for trio's worker threads, signals, clocks, getrandom, and
unlink for the clean-up at exit. Not in it, so refused: opening or creating any file
(open, openat, openat2, creat), execve/execveat, fork/vfork and process-style clone,
ptrace, mount, bpf, the keyring, new sockets except the AF_UNIX ones that --connect and
$NOTIFY_SOCKET need (and, with the fleet store, the TCP sockets that reach etcd),
bind/listen, chmod/chown, setuid and friends, and everything else.

* execve gets EPERM rather than KILL_PROCESS. No code path of the daemon executes
  anything after start-up, so an exec attempt is a bug or an attacker. A bug (a library
  that shells out, as ctypes.util.find_library does) must not take a running guest's
  firmware services down; an attacker gains nothing from exec that the process does not
  already have, because the filter and no_new_privs survive exec. So nothing is lost by
  refusing instead of killing, and the daemon keeps serving.
* clone3 gets ENOSYS: its flags are in memory, where seccomp cannot look, and glibc then
  falls back to clone, whose flags the filter checks (threads only).
* unlink/unlinkat stay allowed because the daemon removes its sockets, its pidfile and
  SQLite its WAL at exit. Which files it can remove is then up to file permissions: as
  root without --user, that is any file, which is one more reason to use --user.

Why pyseccomp: Debian's python3-seccomp (libseccomp's official binding) is a compiled
extension built for Debian's /usr/bin/python3; the project's venv interpreter cannot
import it. pyseccomp is a pure-Python ctypes binding of the same system library
(libseccomp2, part of every Debian installation) with the official module's API, so any
interpreter can use it. It is imported only when a filter is installed, so
`--no-sandbox` works on a machine without libseccomp.
"""

from __future__ import annotations

import codecs
import ctypes
import errno
import grp
import importlib
import mmap
import os
import pwd
import sqlite3
import stat
import termios
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from efird.log import get_logger

log = get_logger("efird.sandbox")


class SandboxError(Exception):
    """A deprivileging step is refused or failed; the message names the flag."""


# -- what the serving path would import or look up later ---------------------------------

#: Modules the daemon imports inside functions on its serving path (grep for imports
#: indented under a def in efird/), and the packages they bring in.
SERVING_IMPORTS: tuple[str, ...] = (
    "logging", "structlog",  # efird.log: structlog is configured on its first use
    "efird.efi.guid", "efird.efi.status",  # efird.envelope.describe: debug request lines
    "efird.abi.layouts",  # efird.variables.limits: construct, for guest-facing sizes
    # efird.variables.authvars, on the first authenticated write: cryptography, asn1crypto
    "efird.efi.pkcs7", "efird.efi.siglist",
    # DomainControl.vars_request, on the first `efird vars` through the control socket
    "efird.control.vars_ops", "efird.variables.admin",
)
#: With the fleet store (efird/store/etcd.py): its HTTP client and what that imports on
#: its error paths (a response's text encoding, header parsing).
ETCD_IMPORTS: tuple[str, ...] = (
    "efird.store.etcd", "etcd3gw", "etcd3gw.lease", "requests", "requests.adapters",
    "urllib3", "urllib3.exceptions", "charset_normalizer", "idna", "http.client",
    "email.parser", "email.feedparser", "json.decoder",
)
#: Text codecs the serving path uses (names are UCS-2 on the wire and in the store):
#: a codec is imported (encodings.<name>) on its first lookup.
SERVING_CODECS: tuple[str, ...] = ("utf-16-le", "utf-16", "utf-8", "ascii", "latin-1", "idna")


def preload(modules: Iterable[str] = SERVING_IMPORTS,
            codec_names: Iterable[str] = SERVING_CODECS) -> None:
    """Import what the serving path imports lazily, while files can still be opened."""
    for name in modules:
        importlib.import_module(name)
    for name in codec_names:
        codecs.lookup(name)


def prepare_sqlite(db: sqlite3.Connection, directory: Path) -> None:
    """Leave SQLite nothing to open later on an already open store.

    With EXCLUSIVE locking and WAL (efird.store.sqlite) SQLite keeps the database and
    WAL descriptors and never creates the -shm file. What it would still open: temporary
    files (statement journals, sorts: kept in memory from here on), /dev/urandom to seed
    its PRNG on the first WAL reset (seeded now) and the store's directory to fsync it on
    the first WAL sync (done here; SQLite ignores its own later failure to open it).
    """
    try:
        db.execute("PRAGMA temp_store = MEMORY")
        db.execute("SELECT randomblob(16)").fetchone()
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except (sqlite3.Error, OSError) as exc:
        raise SandboxError(f"store {directory}: cannot prepare it for the sandbox: {exc}"
                           ) from exc


# -- --user / --group ----------------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    """Who the daemon becomes: the uid/gid, and their names for messages."""

    uid: int
    gid: int
    user: str
    group: str


def _numeric(value: str | int) -> int | None:
    if isinstance(value, int):
        return value
    return int(value) if value.isdigit() else None


def resolve_identity(user: str | int | None, group: str | int | None) -> Identity | None:
    """--user/--group as ids (names or numbers), or None when neither is given.

    SandboxError, naming the flag, for an unknown user or group, for root, for --group
    without --user and when the process is not root (only root can switch users).
    """
    if user is None:
        if group is not None:
            raise SandboxError("--group needs --user: a daemon that stays root keeps every "
                               "privilege whatever its group")
        return None
    euid = os.geteuid()
    if euid != 0:
        raise SandboxError(f"--user needs efird serve to start as root (it runs as uid {euid})"
                           ": it opens the store and the sockets, then switches to the user")
    uid = _numeric(user)
    entry: pwd.struct_passwd | None
    if uid is None:
        try:
            entry = pwd.getpwnam(str(user))
        except KeyError:
            raise SandboxError(f"--user {user}: no such user") from None
        uid = entry.pw_uid
    else:
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            entry = None
    if uid == 0:
        raise SandboxError(f"--user {user} is root (uid 0): name an unprivileged user")
    user_name = entry.pw_name if entry is not None else str(uid)
    if group is None:
        if entry is None:
            raise SandboxError(f"--user {user} has no passwd entry, hence no primary group: "
                               "give --group")
        gid = entry.pw_gid
    else:
        gid_or_none = _numeric(group)
        if gid_or_none is None:
            try:
                gid_or_none = grp.getgrnam(str(group)).gr_gid
            except KeyError:
                raise SandboxError(f"--group {group}: no such group") from None
        gid = gid_or_none
    if gid == 0:
        what = f"--group {group}" if group is not None else f"the primary group of {user}"
        raise SandboxError(f"{what} is root (gid 0): name an unprivileged --group")
    try:
        group_name = grp.getgrgid(gid).gr_name
    except KeyError:
        group_name = str(gid)
    return Identity(uid, gid, user_name, group_name)


def check_removable(identity: Identity, paths: Iterable[Path]) -> None:
    """SandboxError unless `identity` may remove each path (the daemon does at exit).

    Checked as root with the effective ids switched to the user's, before anything is
    created, so that a directory the user cannot write is refused at once rather than
    when the daemon stops.
    """
    problems = []
    saved_groups = os.getgroups()
    saved_egid = os.getegid()
    os.setgroups([])
    os.setegid(identity.gid)
    os.seteuid(identity.uid)
    try:
        for path in paths:
            directory = Path(os.path.abspath(path)).parent
            if not os.access(directory, os.W_OK | os.X_OK, effective_ids=True):
                problems.append(f"{path} (directory {directory})")
    finally:
        os.seteuid(0)
        os.setegid(saved_egid)
        os.setgroups(saved_groups)
    if problems:
        raise SandboxError(
            f"--user {identity.user}: efird removes these at exit, but {identity.user} "
            f"(uid {identity.uid}, gid {identity.gid}) cannot write their directory: "
            + ", ".join(problems) + "; give the user a directory it can write, e.g. a "
            "runtime directory owned by it")


def hand_over(identity: Identity, paths: Iterable[Path]) -> None:
    """chown the files efird created and removes at exit (sockets, pidfile) to the user.

    Never follows a symbolic link (lchown): the directory may be writable by the user.
    """
    for path in paths:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode):
            raise SandboxError(f"{path} became a symbolic link during start-up")
        os.chown(path, identity.uid, identity.gid, follow_symlinks=False)


def drop_privileges(user: str | int, group: str | int | None = None) -> Identity:
    """Become `user` (and `group`, default: the user's primary group) for good.

    setgroups([]), setgid, setuid (real, effective and saved ids), then verify: the ids
    are the new ones, there are no supplementary groups and no capabilities, and neither
    setuid(0) nor setgid(0) works any more. SandboxError otherwise.
    """
    identity = resolve_identity(user, group)
    assert identity is not None
    try:
        os.setgroups([])
        os.setresgid(identity.gid, identity.gid, identity.gid)
        os.setresuid(identity.uid, identity.uid, identity.uid)
    except OSError as exc:
        raise SandboxError(f"--user {identity.user}: cannot switch to uid {identity.uid} "
                           f"gid {identity.gid}: {exc}") from exc
    _verify_dropped(identity)
    return identity


def _verify_dropped(identity: Identity) -> None:
    ids = (os.getresuid(), os.getresgid(), os.getgroups())
    if ids[0] != (identity.uid,) * 3 or ids[1] != (identity.gid,) * 3 or ids[2] not in (
            [], [identity.gid]):
        raise SandboxError(f"--user {identity.user}: ids after the switch are {ids}")
    for regain in (lambda: os.setuid(0), lambda: os.setgid(0), lambda: os.seteuid(0)):
        try:
            regain()
        except PermissionError:
            continue
        raise SandboxError(f"--user {identity.user}: root could be regained after the switch")
    caps = _capabilities()
    if any(caps.get(kind, 0) for kind in ("CapPrm", "CapEff", "CapAmb")):
        raise SandboxError(f"--user {identity.user}: capabilities left after the switch: "
                           f"{caps}")


def _capabilities() -> dict[str, int]:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return {}
    caps = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            caps[key] = int(value.strip(), 16)
    return caps


# -- prctl ---------------------------------------------------------------------------------

PR_SET_NAME, PR_GET_NAME = 15, 16
PR_GET_SECCOMP = 21
PR_SET_NO_NEW_PRIVS, PR_GET_NO_NEW_PRIVS = 38, 39
SECCOMP_MODE_FILTER = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
_libc.prctl.restype = ctypes.c_int


def _prctl(option: int, arg: int = 0) -> int:
    result = int(_libc.prctl(option, arg, 0, 0, 0))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def set_no_new_privs() -> None:
    """prctl(PR_SET_NO_NEW_PRIVS): execve can never grant privileges to this process."""
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if _prctl(PR_GET_NO_NEW_PRIVS) != 1:
        raise SandboxError("no_new_privs did not stick")


def no_new_privs() -> bool:
    return _prctl(PR_GET_NO_NEW_PRIVS) == 1


def seccomp_mode() -> int:
    """0 none, 1 strict, 2 filter (PR_GET_SECCOMP is on the allow-list)."""
    return _prctl(PR_GET_SECCOMP)


# -- the seccomp policy, as data -----------------------------------------------------------

ALL_BITS = (1 << 64) - 1


@dataclass(frozen=True)
class Arg:
    """System call argument `index` (0-based), masked with `mask`, equals `value`."""

    index: int
    value: int
    mask: int = ALL_BITS


@dataclass(frozen=True)
class Rule:
    """Allow `syscall` (or fail it with `errno`) when every `when` holds."""

    syscall: str
    when: tuple[Arg, ...] = ()
    errno: int | None = None


@dataclass(frozen=True)
class SeccompPolicy:
    """An allow-list: rules for the same call are alternatives; anything matching no rule
    fails with `default_errno`."""

    rules: tuple[Rule, ...]
    default_errno: int = errno.EPERM

    def allowed(self) -> frozenset[str]:
        """The calls allowed with some arguments."""
        return frozenset(r.syscall for r in self.rules if r.errno is None)


#: Allowed with any arguments, grouped by why the daemon needs them.
ALLOWED: dict[str, tuple[str, ...]] = {
    "trio's event loop (epoll; poll and sleeps in library code)": (
        "epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl", "poll", "ppoll",
        "nanosleep", "clock_nanosleep"),
    "I/O on descriptors the daemon holds: sockets, eventfds, the log, the store": (
        "read", "readv", "write", "writev", "pread64", "pwrite64", "preadv", "pwritev",
        "lseek", "close", "dup", "dup2", "dup3", "fcntl", "eventfd2"),
    "the vhost-user and control connections (accept4 on the listening sockets, "
    "SCM_RIGHTS)": (
        "accept", "accept4", "recvfrom", "recvmsg", "sendto", "sendmsg", "getsockname",
        "getpeername", "getsockopt", "setsockopt", "shutdown"),
    "SQLite on its open store, lock file and WAL": (
        "fsync", "fdatasync", "ftruncate", "fallocate", "flock", "fstatfs"),
    "file status (SQLite checks its files; tracebacks stat source files)": (
        "fstat", "newfstatat", "stat", "lstat", "statx"),
    "removing the sockets and the pidfile (and SQLite its WAL) at exit": (
        "unlink", "unlinkat"),
    "memory: the allocator, guest memory mappings": ("brk", "munmap", "mremap", "madvise"),
    "threads (trio.to_thread workers) and their synchronisation": (
        "futex", "set_robust_list", "rseq", "sched_yield", "exit", "gettid"),
    "signals (SIGTERM and SIGINT reach trio through its wake-up descriptor)": (
        "rt_sigreturn", "rt_sigaction", "rt_sigprocmask", "sigaltstack", "restart_syscall"),
    "clocks and randomness": ("clock_gettime", "clock_getres", "gettimeofday", "time",
                              "getrandom"),
    "who am I, and exit": ("getpid", "getppid", "getuid", "geteuid", "getgid", "getegid",
                           "getresuid", "getresgid", "getgroups", "exit_group"),
}

#: Refused explicitly (with EPERM, like everything not allowed); listed for the record and
#: the tests, the filter refuses them through its default action.
DENIED_EXAMPLES: tuple[str, ...] = (
    "open", "openat", "openat2", "creat", "execve", "execveat", "fork", "vfork", "ptrace",
    "mount", "umount2", "pivot_root", "chroot", "bind", "listen", "socketpair", "kill",
    "setuid", "setgid", "setgroups", "chmod", "fchmod", "chown", "fchown", "rename",
    "mkdir", "symlink", "link", "bpf", "keyctl", "add_key", "request_key", "unshare",
    "setns", "process_vm_readv", "process_vm_writev", "memfd_create", "seccomp",
    "init_module", "finit_module", "kexec_load", "reboot", "swapon", "perf_event_open",
    "userfaultfd", "io_uring_setup", "pkey_mprotect",
)

# Linux UAPI values, the same on every architecture.
CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND = 0x100, 0x200, 0x400, 0x800
CLONE_PTRACE, CLONE_VFORK, CLONE_PARENT, CLONE_THREAD = 0x2000, 0x4000, 0x8000, 0x10000
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = (0x20000, 0x2000000, 0x4000000,
                                                            0x8000000)
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
#: What pthread_create passes (plus flags outside this mask, such as CLONE_SETTLS):
#: a thread of this process, never a new process or namespace.
THREAD_CLONE_FLAGS = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD
THREAD_CLONE_MASK = (THREAD_CLONE_FLAGS | CLONE_PTRACE | CLONE_VFORK | CLONE_PARENT
                     | CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC
                     | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET)
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
SOCK_STREAM, SOCK_DGRAM = 1, 2
SOCK_TYPE_MASK = 0xF
#: ioctls the daemon makes: non-blocking and close-on-exec flags, and isatty.
ALLOWED_IOCTLS = (termios.FIONBIO, termios.FIOCLEX, termios.FIONCLEX, termios.TCGETS)
#: prctls: trio names its worker threads; the two reads let the daemon check itself.
ALLOWED_PRCTLS = (PR_SET_NAME, PR_GET_NAME, PR_GET_SECCOMP, PR_GET_NO_NEW_PRIVS)


def serving_policy(*, connect: bool = False, notify: bool = False, inet: bool = False,
                   pid: int | None = None) -> SeccompPolicy:
    """The daemon's allow-list.

    connect: the daemon connects to the VMM (--connect), again after each disconnect:
    AF_UNIX stream sockets and connect. notify: $NOTIFY_SOCKET is set (systemd): AF_UNIX
    datagram sockets, for STOPPING=1 at shutdown. inet: the store is the fleet store
    (etcd), reached over TCP: AF_INET and AF_INET6 stream sockets and connect (its
    endpoints were resolved before the lock-down; names are not resolved after it).
    pid: the process that may signal itself with tgkill (default: this one).
    """
    rules = [Rule(name) for names in ALLOWED.values() for name in names]
    no_exec = Arg(2, 0, mmap.PROT_EXEC)  # writable memory is never made executable
    rules += [Rule("mmap", (no_exec,)), Rule("mprotect", (no_exec,))]
    rules.append(Rule("clone", (Arg(0, THREAD_CLONE_FLAGS, THREAD_CLONE_MASK),)))
    rules.append(Rule("clone3", errno=errno.ENOSYS))  # glibc falls back to clone
    rules += [Rule("ioctl", (Arg(1, request, 0xFFFF_FFFF),)) for request in ALLOWED_IOCTLS]
    rules += [Rule("prctl", (Arg(0, option),)) for option in ALLOWED_PRCTLS]
    rules.append(Rule("tgkill", (Arg(0, os.getpid() if pid is None else pid),)))
    socket_types = ([SOCK_STREAM] if connect else []) + ([SOCK_DGRAM] if notify else [])
    rules += [Rule("socket", (Arg(0, AF_UNIX), Arg(1, kind, SOCK_TYPE_MASK)))
              for kind in socket_types]
    if inet:
        rules += [Rule("socket", (Arg(0, family), Arg(1, SOCK_STREAM, SOCK_TYPE_MASK)))
                  for family in (AF_INET, AF_INET6)]
    if connect or inet:
        rules.append(Rule("connect"))
    return SeccompPolicy(tuple(rules))


# -- installing it -------------------------------------------------------------------------

def load_libseccomp() -> ModuleType:
    """pyseccomp, bound to the system's libseccomp; SandboxError when it is missing."""
    try:
        import pyseccomp  # type: ignore[import-untyped]
    except (ImportError, RuntimeError, OSError) as exc:
        raise SandboxError(f"seccomp: cannot load libseccomp ({exc}); install libseccomp2 "
                           "(and `pip install pyseccomp`), or serve with --no-sandbox") from None
    return pyseccomp


def compile_filter(policy: SeccompPolicy) -> Any:
    """The policy as a pyseccomp SyscallFilter, not yet loaded."""
    seccomp = load_libseccomp()
    flt = seccomp.SyscallFilter(seccomp.ERRNO(policy.default_errno))
    flt.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)  # a foreign ABI: attack
    flt.set_attr(seccomp.Attr.CTL_TSYNC, 1)  # every thread, trio's workers included
    for rule in policy.rules:
        if seccomp.resolve_syscall(seccomp.Arch.NATIVE, rule.syscall) < 0:
            continue  # not a system call on this architecture (open, stat on arm64...)
        action = seccomp.ALLOW if rule.errno is None else seccomp.ERRNO(rule.errno)
        args = [seccomp.Arg(a.index, seccomp.EQ, a.value) if a.mask == ALL_BITS
                else seccomp.Arg(a.index, seccomp.MASKED_EQ, a.mask, a.value)
                for a in rule.when]
        try:
            flt.add_rule(action, rule.syscall, *args)
        except OSError as exc:
            raise SandboxError(f"seccomp: cannot add the rule {rule}: {exc}") from exc
    return flt


def install_seccomp(policy: SeccompPolicy) -> None:
    """Load `policy` into the kernel for every thread of the process. Irreversible."""
    flt = compile_filter(policy)
    try:
        flt.load()
    except OSError as exc:
        raise SandboxError(f"seccomp: the kernel refused the filter: {exc} (--no-sandbox "
                           "serves without it)") from exc
    if seccomp_mode() != SECCOMP_MODE_FILTER:
        raise SandboxError("seccomp: the filter is not in force after loading it")


def lock_down(*, identity: Identity | None, seccomp: bool, hand_over_paths: Sequence[Path],
              connect: bool, notify: bool, inet: bool = False) -> None:
    """Steps 3 to 5 of the module docstring (preload and prepare_sqlite come first)."""
    if identity is not None:
        hand_over(identity, hand_over_paths)
        drop_privileges(identity.uid, identity.gid)
    set_no_new_privs()
    if seccomp:
        install_seccomp(serving_policy(connect=connect, notify=notify, inet=inet))
    log.info("deprivileged", uid=os.getuid(), gid=os.getgid(), no_new_privs=True,
             seccomp="filter" if seccomp else "off",
             **({"user": identity.user, "group": identity.group} if identity else {}))
