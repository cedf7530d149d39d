"""Deprivileging `efird serve` (efird/sandbox.py): --user/--group, no_new_privs and the
seccomp allow-list.

After start-up the daemon can open no file, execute nothing and start no process, and it
keeps serving: the guest's variable calls (an authenticated write among them, so the
PKCS#7 stack is used after the lock-down), the control socket, `efird vars` through the
daemon, a VMM reconnecting, and SIGTERM.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from efird import sandbox
from efird.abi import client as c
from efird.control.client import ControlClient
from efird.efi import guid as g
from efird.efi.status import Status
from efird.store.sqlite import SqliteStore

from . import sbkeys
from .cli import efird_vars
from .daemon import EfirdDaemon, attach
from .vhost.frontend import VhostUserFrontend

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="switching users needs root")
GV, DB = g.EFI_GLOBAL_VARIABLE, g.EFI_IMAGE_SECURITY_DATABASE
VENDOR = "6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
VENDOR_B = g.guid_bytes(VENDOR)
OWNER = "77fa9abd-0359-4d32-bd60-28f4e78f784b"
AUTH = sbkeys.SIGN_EFI_SIG_LIST_ATTRIBUTES
NOBODY, NOGROUP = 65534, 65534


@pytest.fixture
def work() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="efird-sb-"))  # short: unix socket paths
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, sbkeys.KeyPair]:
    d = sbkeys.session_dir(tmp_path_factory)
    return {name: sbkeys.make_keypair(d, f"sandbox-{name}", f"efird sandbox test {name}")
            for name in ("pk", "kek")}


def task_status(pid: int) -> list[dict[str, str]]:
    """/proc/<pid>/task/*/status of every thread."""
    out = []
    for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
        fields = {}
        for line in (task / "status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        out.append(fields)
    return out


# -- --user / --group ----------------------------------------------------------------------

@needs_root
def test_user_and_group_by_name_or_number() -> None:
    by_name = sandbox.resolve_identity("nobody", "nogroup")
    assert by_name == sandbox.Identity(NOBODY, NOGROUP, "nobody", "nogroup")
    assert sandbox.resolve_identity(str(NOBODY), str(NOGROUP)) == by_name
    assert sandbox.resolve_identity("nobody", None) == by_name  # the primary group
    assert sandbox.resolve_identity(None, None) is None


@needs_root
@pytest.mark.parametrize(("user", "group", "message"), [
    ("no-such-user-efird", None, "--user no-such-user-efird: no such user"),
    ("nobody", "no-such-group-efird", "--group no-such-group-efird: no such group"),
    (None, "nogroup", "--group needs --user"),
    ("root", None, "--user root is root"),
    ("0", None, "--user 0 is root"),
    ("nobody", "0", "--group 0 is root"),
    ("4242424", None, "--user 4242424 has no passwd entry"),
])
def test_bad_user_or_group_is_refused_naming_the_flag(user: str | None, group: str | None,
                                                      message: str) -> None:
    with pytest.raises(sandbox.SandboxError, match=message):
        sandbox.resolve_identity(user, group)


def test_user_needs_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(os, "geteuid", lambda: 1000)
        with pytest.raises(sandbox.SandboxError, match=r"--user needs efird serve to start "
                                                       r"as root \(it runs as uid 1000\)"):
            sandbox.resolve_identity("nobody", None)
    # through the command line (in a process that believes it is not root): a usage
    # error, exit 2, before anything is created
    argv = ["serve", "--socket", str(tmp_path / "vm.sock"), "--store",
            str(tmp_path / "vm.efivars"), "--user", "nobody"]
    proc = subprocess.run(
        [sys.executable, "-c", "import os, sys; os.geteuid = lambda: 1000; "
         "from efird.cli.main import main; sys.exit(main(sys.argv[1:]))", *argv],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "--user needs efird serve to start as root (it runs as uid 1000)" in proc.stderr
    assert list(tmp_path.iterdir()) == []


@needs_root
def test_unknown_user_and_unwritable_directory_are_usage_errors(work: Path) -> None:
    base = [sys.executable, "-m", "efird.cli.main", "serve", "--socket", str(work / "vm.sock"),
            "--store", str(work / "vm.efivars")]
    proc = subprocess.run([*base, "--user", "no-such-user-efird"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "--user no-such-user-efird: no such user" in proc.stderr
    proc = subprocess.run([*base, "--user", "nobody", "--group", "no-such-group-efird"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--group no-such-group-efird" in proc.stderr
    # work is root's, mode 0700: nobody could not remove the socket at exit
    proc = subprocess.run([*base, "--user", "nobody"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "--user nobody" in proc.stderr and str(work / "vm.sock") in proc.stderr
    assert list(work.iterdir()) == []  # refused before anything was created


# -- the policy ----------------------------------------------------------------------------

def test_policy_allows_what_serving_needs_and_nothing_that_escapes() -> None:
    policy = sandbox.serving_policy()
    allowed = policy.allowed()
    assert policy.default_errno == errno.EPERM
    for needed in ("epoll_wait", "eventfd2", "read", "write", "recvmsg", "sendmsg", "accept4",
                   "mmap", "munmap", "pread64", "pwrite64", "fdatasync", "fsync", "ftruncate",
                   "fstat", "lseek", "fcntl", "flock", "close", "futex", "clock_gettime",
                   "getpid", "rt_sigreturn", "rt_sigaction", "rt_sigprocmask", "sigaltstack",
                   "exit", "exit_group", "madvise", "brk", "getrandom", "clone"):
        assert needed in allowed, needed
    assert not allowed & set(sandbox.DENIED_EXAMPLES)
    assert "socket" not in allowed and "connect" not in allowed
    clone3 = [r for r in policy.rules if r.syscall == "clone3"]
    assert clone3 == [sandbox.Rule("clone3", errno=errno.ENOSYS)]
    (clone,) = [r for r in policy.rules if r.syscall == "clone"]
    assert clone.when == (sandbox.Arg(0, sandbox.THREAD_CLONE_FLAGS,
                                      sandbox.THREAD_CLONE_MASK),)
    with_connect = sandbox.serving_policy(connect=True, notify=True)
    sockets = {r.when for r in with_connect.rules if r.syscall == "socket"}
    assert sockets == {(sandbox.Arg(0, sandbox.AF_UNIX), sandbox.Arg(1, kind, 0xF))
                       for kind in (sandbox.SOCK_STREAM, sandbox.SOCK_DGRAM)}
    assert "connect" in with_connect.allowed()


def _in_sandboxed_child(policy: sandbox.SeccompPolicy,
                        checks: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Fork; the child installs `policy` (efird's code, efird's allow-list), runs `checks`
    and sends back what they returned."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 0
        result: dict[str, Any]
        try:
            os.close(read_end)
            sandbox.preload()
            sandbox.set_no_new_privs()
            sandbox.install_seccomp(policy)
            result = checks()
        except BaseException as exc:
            result, status = {"child failed": repr(exc)}, 1
        try:
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(status)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 65536):
        data += chunk
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    reported: dict[str, Any] = json.loads(data)
    assert os.waitstatus_to_exitcode(status) == 0, reported
    return reported


def _outcome(fn: Callable[[], object]) -> str:
    try:
        fn()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


def test_after_lockdown_no_file_opens_no_exec_no_fork(tmp_path: Path) -> None:
    """efird's exact policy, applied in a forked child: opening files, exec and fork fail
    with EPERM; what the daemon does while serving still works."""
    import mmap
    import socket
    import threading

    open_file = (tmp_path / "store").open("w+b")  # opened before, like the store
    directory = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    guest = os.memfd_create("guest-ram")  # what the VMM passes over the socket
    os.ftruncate(guest, 1 << 16)
    pipe_r, pipe_w = os.pipe()

    def checks() -> dict[str, Any]:
        def thread() -> None:
            ran: list[int] = []
            worker = threading.Thread(target=lambda: ran.append(1))
            worker.start()
            worker.join()
            assert ran == [1]

        def guest_memory() -> None:
            mapping = mmap.mmap(guest, 1 << 16, mmap.MAP_SHARED,
                                mmap.PROT_READ | mmap.PROT_WRITE)
            mapping[:4] = b"efir"
            mapping.close()

        def sync() -> None:
            open_file.write(b"data")
            open_file.flush()
            os.fdatasync(open_file.fileno())

        def eventfd() -> None:
            fd = os.eventfd(0)
            os.eventfd_write(fd, 1)
            assert os.eventfd_read(fd) == 1
            os.close(fd)

        return {
            "open": _outcome(lambda: os.open("/etc/hostname", os.O_RDONLY)),
            "openat": _outcome(lambda: os.open("store", os.O_RDONLY, dir_fd=directory)),
            "create": _outcome(lambda: os.open(tmp_path / "new", os.O_CREAT | os.O_WRONLY)),
            "execve": _outcome(lambda: os.execv("/bin/true", ["/bin/true"])),
            "fork": _outcome(os.fork),
            "subprocess": _outcome(lambda: subprocess.run(["/bin/true"], check=False)),
            "inet socket": _outcome(lambda: socket.socket(socket.AF_INET)),
            "unix socket": _outcome(lambda: socket.socket(socket.AF_UNIX)),
            "executable memory": _outcome(
                lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC)),
            "setuid": _outcome(lambda: os.setuid(0)),
            "eventfd": _outcome(eventfd),
            "read/write": _outcome(lambda: (os.write(pipe_w, b"x"), os.read(pipe_r, 1))),
            "guest memory mmap": _outcome(guest_memory),
            "fdatasync": _outcome(sync),
            "thread": _outcome(thread),
            "getrandom": _outcome(lambda: os.urandom(16)),
            "seccomp mode": sandbox.seccomp_mode(),
            "no_new_privs": sandbox.no_new_privs(),
        }

    try:
        result = _in_sandboxed_child(sandbox.serving_policy(), checks)
    finally:
        for fd in (directory, guest, pipe_r, pipe_w):
            os.close(fd)
        open_file.close()
    for denied in ("open", "openat", "create", "execve", "fork", "subprocess", "inet socket",
                   "unix socket", "executable memory"):
        assert result[denied] == "EPERM", (denied, result)
    assert result["setuid"] == "EPERM"
    for allowed in ("eventfd", "read/write", "guest memory mmap", "fdatasync", "thread",
                    "getrandom"):
        assert result[allowed] == "ok", (allowed, result)
    assert result["seccomp mode"] == 2 and result["no_new_privs"] is True
    assert not (tmp_path / "new").exists()


def test_connect_policy_allows_unix_stream_sockets_only(tmp_path: Path) -> None:
    import socket

    def checks() -> dict[str, Any]:
        return {
            "unix stream": _outcome(lambda: socket.socket(socket.AF_UNIX,
                                                          socket.SOCK_STREAM).close()),
            "unix datagram": _outcome(lambda: socket.socket(socket.AF_UNIX,
                                                            socket.SOCK_DGRAM).close()),
            "inet": _outcome(lambda: socket.socket(socket.AF_INET).close()),
        }

    result = _in_sandboxed_child(sandbox.serving_policy(connect=True), checks)
    assert result == {"unix stream": "ok", "unix datagram": "EPERM", "inet": "EPERM"}


def test_every_lazy_import_on_the_serving_path_is_preloaded() -> None:
    """Every import inside a function of an efird module the daemon has loaded names a
    module that preload() has already imported: after the lock-down, none could be read.
    (efird.cli runs before the lock-down; modules the daemon never loads do not count.)"""
    script = """
import ast, importlib.util, json, sys
from pathlib import Path
import efird.cli.daemon
from efird import sandbox

def is_module(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False

sandbox.load_libseccomp()  # as the daemon does at start-up, unless --no-sandbox
if sys.argv[1] == "preload":
    sandbox.preload()
missing = {}
for name, module in sorted(sys.modules.items()):
    path = getattr(module, "__file__", None) or ""
    if not name.startswith("efird.") or name.startswith("efird.cli") \\
            or not path.endswith(".py"):
        continue
    for node in ast.walk(ast.parse(Path(path).read_text())):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for inner in ast.walk(node):
            targets = []
            if isinstance(inner, ast.Import):
                targets = [a.name for a in inner.names]
            elif isinstance(inner, ast.ImportFrom) and inner.module and not inner.level:
                targets = [f"{inner.module}.{a.name}" if is_module(f"{inner.module}.{a.name}")
                           else inner.module for a in inner.names]
            missing.setdefault(name, []).extend(t for t in targets if t not in sys.modules)
print(json.dumps({k: v for k, v in missing.items() if v}))
"""
    def missing(*args: str) -> dict[str, list[str]]:
        proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                              text=True, timeout=60, check=True)
        result: dict[str, list[str]] = json.loads(proc.stdout)
        return result

    assert missing("preload") == {}
    # without preload() the scan finds the lazy imports it is there to find
    unloaded = missing("no-preload")
    assert "efird.efi.pkcs7" in unloaded["efird.variables.authvars"]
    assert "efird.control.vars_ops" in unloaded["efird.control.domain_handler"]


# -- the real daemon -----------------------------------------------------------------------

def call(front: VhostUserFrontend, request: bytes) -> bytes:
    return front.request(0, request, len(request))


def get(front: VhostUserFrontend, guid: bytes, name: str) -> tuple[Status, bytes]:
    got = c.parse_get_variable(call(front, c.get_variable(guid, name, 8192)))
    return got.status, got.data


def assert_clean_log(daemon: EfirdDaemon) -> None:
    """No error and no trace of a refused system call in the daemon's log."""
    text = daemon.log_path.read_text()
    for needle in ("Operation not permitted", "PermissionError", "EPERM", "denied",
                   "Traceback"):
        assert needle not in text, (needle, text[-3000:])
    errors = [line for line in daemon.lines()
              if line.get("level") in ("error", "critical", "exception")
              or line.get("event") == "(not json)"]
    assert errors == []


@pytest.mark.slow
@pytest.mark.parametrize("as_nobody", [False, pytest.param(True, marks=needs_root)],
                         ids=["root", "nobody"])
def test_sandboxed_daemon_keeps_serving(work: Path, keys: dict[str, sbkeys.KeyPair],
                                        as_nobody: bool) -> None:
    extra = ["--user", "nobody", "--group", "nogroup"] if as_nobody else []
    if as_nobody:
        os.chown(work, NOBODY, NOGROUP)  # the user removes its sockets and pidfile at exit
    ctl, pidfile = work / "vm.ctl", work / "vm.pid"
    daemon = EfirdDaemon(work / "vm.sock", work / "vm.efivars", "--domain", "vm1",
                         "--control", str(ctl), "--pidfile", str(pidfile), *extra)
    with daemon:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        # (a) every thread: no_new_privs, a seccomp filter and, with --user, the new ids
        tasks = task_status(pid)
        for task in tasks:
            assert task["NoNewPrivs"] == "1" and task["Seccomp"] == "2", task
            if as_nobody:
                assert task["CapEff"] == "0" * 16 and task["CapPrm"] == "0" * 16
                assert task["Uid"].split() == [str(NOBODY)] * 4
                assert task["Gid"].split() == [str(NOGROUP)] * 4
                assert task["Groups"] == ""
        assert daemon.events("deprivileged")[0]["seccomp"] == "filter"
        if as_nobody:
            for path in (daemon.socket, ctl, pidfile):
                assert (path.stat().st_uid, path.stat().st_gid) == (NOBODY, NOGROUP), path

        # (c) the guest: plain and authenticated writes (cryptography after lock-down)
        with attach(daemon) as front:
            assert c.return_status(call(front, c.set_variable(VENDOR_B, "Plain", 7,
                                                              b"\x01\x02"))) is Status.SUCCESS
            assert get(front, VENDOR_B, "Plain") == (Status.SUCCESS, b"\x01\x02")
            pk_esl = sbkeys.esl_from_cert(keys["pk"], OWNER)
            pk = sbkeys.sign_auth("PK", pk_esl, keys["pk"], timestamp="2026-01-01 00:00:01")
            assert c.return_status(call(front, c.set_variable(GV, "PK", AUTH, pk))
                                   ) is Status.SUCCESS
            assert get(front, GV, "SetupMode") == (Status.SUCCESS, b"\x00")
            kek = sbkeys.sign_auth("KEK", sbkeys.esl_from_cert(keys["kek"], OWNER),
                                   keys["pk"], timestamp="2026-01-01 00:00:02")
            assert c.return_status(call(front, c.set_variable(GV, "KEK", AUTH, kek))
                                   ) is Status.SUCCESS
            forged = sbkeys.sign_auth("KEK", pk_esl, keys["kek"],
                                      timestamp="2026-01-01 00:00:03")
            assert c.return_status(call(front, c.set_variable(GV, "KEK", AUTH, forged))
                                   ) is Status.SECURITY_VIOLATION
            # the control socket and `efird vars` through the daemon
            client = ControlClient(ctl)
            assert client.status()["requests"] >= 6
            assert json.loads(client.save_state())["state"]["domain"] == "vm1"
            assert client.reload_store()["variables"] >= 6
            result = efird_vars(daemon.store, "set", "FromHost", "--guid", VENDOR,
                                "--string", "hi")
            assert result.returncode == 0, result.stderr
            assert get(front, VENDOR_B, "FromHost")[0] is Status.SUCCESS
            listed = json.loads(efird_vars(daemon.store, "list", "--json").stdout)
            assert "FromHost" in json.dumps(listed)
            assert call(front, b"\xff" * 40) == b""  # a malformed envelope: refused
        # the VMM goes away and comes back: the listening socket still accepts
        with attach(daemon) as front:
            assert get(front, VENDOR_B, "FromHost")[0] is Status.SUCCESS
            assert get(front, GV, "KEK")[0] is Status.SUCCESS
        assert daemon.stop(signal.SIGTERM) == 0
    assert_clean_log(daemon)
    for path in (daemon.socket, ctl, pidfile):
        assert not path.exists(), path
    store = SqliteStore(daemon.store, exclusive=False)
    try:
        names = {v.name for v in store.load()}
    finally:
        store.close()
    assert {"Plain", "PK", "KEK", "FromHost"} <= names


def test_no_sandbox_leaves_the_filter_out(work: Path) -> None:
    with EfirdDaemon(work / "vm.sock", work / "vm.efivars", "--no-sandbox") as daemon:
        assert daemon.proc is not None
        (main_task, *_) = task_status(daemon.proc.pid)
        assert main_task["Seccomp"] == "0" and main_task["NoNewPrivs"] == "1"
        assert daemon.events("deprivileged")[0]["seccomp"] == "off"
        with attach(daemon) as front:
            assert get(front, GV, "SetupMode")[0] is Status.SUCCESS
        assert daemon.stop() == 0
    assert_clean_log(daemon)


@needs_root
def test_connect_mode_reconnects_after_lockdown(work: Path) -> None:
    """--connect --on-disconnect wait as nobody: each new connection to the VMM is a new
    AF_UNIX socket and a connect(), made under the filter and without root."""
    import socket

    os.chown(work, NOBODY, NOGROUP)
    sock = work / "qemu.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # the VMM (server=on)
    listener.bind(str(sock))
    os.chmod(sock, 0o666)  # the VMM lets efird's user connect
    listener.listen(1)
    listener.settimeout(20)
    daemon = EfirdDaemon(sock, work / "vm.efivars", "--connect", "--on-disconnect", "wait",
                         "--user", "nobody")
    try:
        with daemon, VhostUserFrontend(timeout=10.0) as front:
            conn, _ = listener.accept()
            front.connect(conn)
            front.handshake()
            assert c.return_status(call(front, c.set_variable(VENDOR_B, "First", 7, b"1"))
                                   ) is Status.SUCCESS
            front.disconnect()  # the VMM restarts its chardev: efird connects again
            conn, _ = listener.accept()
            front.reconnect(conn)
            assert get(front, VENDOR_B, "First") == (Status.SUCCESS, b"1")
            assert daemon.events("deprivileged")[0]["user"] == "nobody"
            assert daemon.stop() == 0
    finally:
        listener.close()
    assert_clean_log(daemon)


def test_the_fleet_store_policy_allows_tcp_to_etcd_and_nothing_more() -> None:
    """With an etcd:// store (efird/store/etcd.py) the daemon reaches etcd over TCP after
    the lock-down: TCP sockets and connect are allowed, nothing else is; the HTTP client's
    connection and error paths open no file (efird/store/etcd.py resolves names first)."""
    import socket

    base = sandbox.serving_policy()
    assert "connect" not in base.allowed()
    fleet = sandbox.serving_policy(inet=True)
    assert {r.when for r in fleet.rules if r.syscall == "socket"} == {
        (sandbox.Arg(0, family), sandbox.Arg(1, sandbox.SOCK_STREAM, 0xF))
        for family in (sandbox.AF_INET, sandbox.AF_INET6)}
    assert "connect" in fleet.allowed()
    sandbox.preload(sandbox.ETCD_IMPORTS)  # as efird/cli/daemon.py does before locking down
    import requests

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # the kernel completes connections; nobody ever answers
    port = listener.getsockname()[1]
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()

    def checks() -> dict[str, Any]:
        session = requests.Session()
        session.trust_env = False

        def tcp() -> None:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.sendall(b"x")
            s.close()

        def http(target: int, timeout: float) -> str:
            try:
                session.post(f"http://127.0.0.1:{target}/v3/kv/range", json={},
                             timeout=timeout)
            except requests.ConnectionError as exc:
                return "refused" if "refused" in str(exc) else f"other: {exc}"
            except requests.Timeout:
                return "timeout"
            return "answered"

        return {
            "tcp": _outcome(tcp),
            "http to a closed port": http(closed_port, 2),
            "http to a silent server": http(port, 0.2),
            "udp socket": _outcome(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)),
            "unix socket": _outcome(lambda: socket.socket(socket.AF_UNIX)),
            "netlink socket": _outcome(lambda: socket.socket(socket.AF_NETLINK,
                                                             socket.SOCK_RAW)),
            "open": _outcome(lambda: os.open("/etc/hosts", os.O_RDONLY)),
        }

    try:
        result = _in_sandboxed_child(fleet, checks)
    finally:
        listener.close()
    assert result["tcp"] == "ok", result
    assert result["http to a closed port"] == "refused", result
    assert result["http to a silent server"] == "timeout", result
    for denied in ("udp socket", "unix socket", "netlink socket", "open"):
        assert result[denied] == "EPERM", (denied, result)
