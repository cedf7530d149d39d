"""The control socket as a toolstack uses it: every op over a raw socket and through
ControlClient, malformed input, concurrency, event streaming (including a subscriber too
slow to keep up), socket handling, and `efird ctl` end to end, against serve_control
running in the test's trio run with a fake ControlHandler."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from efird.cli import ctl
from efird.control import protocol as p
from efird.control.client import ControlClient, ControlConnectionError
from efird.control.protocol import ControlError
from efird.control.server import EventBus, SocketInUseError, serve_control

STATE = b"EFIRD\x00\x01state\xff" * 3
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class FakeHandler:
    """A ControlHandler that records what it was asked and can be told to misbehave."""

    def __init__(self) -> None:
        self.state = STATE
        self.restored: list[bytes] = []
        self.reloads = 0
        self.stopped = trio.Event()
        self.status_gate: trio.Event | None = None
        self.fail_status = False
        self.on_stop: Callable[[], None] | None = None

    async def status(self) -> dict[str, Any]:
        if self.status_gate is not None:
            await self.status_gate.wait()
        if self.fail_status:
            raise RuntimeError("the store vanished")
        return {"domain": "vm1", "phase": "runtime", "store": {"path": "/s", "variables": 3}}

    async def save_state(self) -> bytes:
        return self.state

    async def restore_state(self, blob: bytes) -> None:
        if not blob.startswith(b"EFIRD"):
            raise ControlError("bad-state", "not an efird state blob")
        self.restored.append(blob)
        self.state = blob

    async def reload_store(self) -> dict[str, Any]:
        self.reloads += 1
        return {"variables": 3, "changed": 1}

    async def stop(self) -> None:
        self.stopped.set()
        if self.on_stop is not None:
            self.on_stop()


@dataclass
class Server:
    path: Path
    handler: FakeHandler
    bus: EventBus


@pytest.fixture
def tmpdir_short() -> Iterator[Path]:
    """Unix socket paths must stay under 108 bytes: not pytest's long tmp_path."""
    path = Path(tempfile.mkdtemp(prefix="efird-ctl-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
async def close_raw_connections() -> AsyncIterator[None]:
    yield
    while Raw.opened:
        await Raw.opened.pop().aclose()


@pytest.fixture
async def server(nursery: trio.Nursery, tmpdir_short: Path) -> Server:
    handler, bus = FakeHandler(), EventBus(capacity=8)
    path = tmpdir_short / "ctl.sock"
    await nursery.start(partial(serve_control, path, handler, bus=bus))
    return Server(path, handler, bus)


class Raw:
    """A raw protocol connection: bytes out, parsed lines in. Closed after each test."""

    opened: list[Raw] = []

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def open(cls, path: Path) -> Raw:
        raw = cls(await trio.open_unix_socket(str(path)))
        cls.opened.append(raw)
        return raw

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def line(self, timeout: float = 5.0) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while b"\n" not in self.buffer:
                data = await self.stream.receive_some(1 << 16)
                assert data, "the server closed the connection"
                self.buffer += data
        raw, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer = bytearray(rest)
        obj: dict[str, Any] = json.loads(raw)
        return obj

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        await self.send(json.dumps(request).encode() + b"\n")
        return await self.line()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await trio.to_thread.run_sync(partial(fn, *args))


async def wait_subscribers(bus: EventBus, count: int) -> None:
    with trio.fail_after(5):
        while bus.subscribers < count:
            await trio.sleep(0.005)


# ---- every op, both ways ---------------------------------------------------------------

async def test_every_op_over_a_raw_socket(server: Server) -> None:
    raw = await Raw.open(server.path)
    reply = await raw.call({"id": 1, "op": "status"})
    assert reply == {"id": 1, "ok": True, "result": {
        "domain": "vm1", "phase": "runtime", "store": {"path": "/s", "variables": 3}}}
    reply = await raw.call({"id": "save", "op": "save-state"})
    assert reply["id"] == "save" and reply["ok"] is True
    assert base64.b64decode(reply["result"]["state"]) == STATE
    new = b"EFIRD new"
    reply = await raw.call({"id": 3, "op": "restore-state",
                            "state": base64.b64encode(new).decode()})
    assert reply == {"id": 3, "ok": True, "result": {}}
    assert server.handler.restored == [new]
    assert await raw.call({"id": 4, "op": "reload-store"}) == {
        "id": 4, "ok": True, "result": {"variables": 3, "changed": 1}}
    assert await raw.call({"id": 5, "op": "stop"}) == {"id": 5, "ok": True, "result": {}}
    assert server.handler.stopped.is_set()
    assert await raw.call({"id": 6, "op": "events"}) == {"id": 6, "ok": True, "result": {}}
    await raw.aclose()


async def test_every_op_through_the_client(server: Server) -> None:
    client = ControlClient(server.path, timeout=5)
    try:
        assert (await in_thread(client.status))["domain"] == "vm1"
        assert await in_thread(client.save_state) == STATE
        await in_thread(client.restore_state, b"EFIRD restored")
        assert server.handler.restored == [b"EFIRD restored"]
        assert await in_thread(client.save_state) == b"EFIRD restored"
        assert await in_thread(client.reload_store) == {"variables": 3, "changed": 1}
        assert server.handler.reloads == 1
        await in_thread(client.stop)
        assert server.handler.stopped.is_set()
        assert (await in_thread(client.status))["phase"] == "runtime"  # reconnects
    finally:
        client.close()


async def test_requests_on_one_connection_are_answered_in_order(server: Server) -> None:
    raw = await Raw.open(server.path)
    await raw.send(b"".join(p.encode_request(i, op) for i, op in
                            enumerate(["status", "reload-store", "save-state", "bogus"] * 5)))
    replies = [await raw.line() for _ in range(20)]
    assert [r["id"] for r in replies] == list(range(20))
    assert [r["ok"] for r in replies[:4]] == [True, True, True, False]
    await raw.aclose()


async def test_restore_refusal_is_a_control_error_with_its_code(server: Server) -> None:
    raw = await Raw.open(server.path)
    reply = await raw.call({"id": 9, "op": "restore-state",
                            "state": base64.b64encode(b"junk").decode()})
    assert reply == {"id": 9, "ok": False, "error": {"code": "bad-state",
                                                     "message": "not an efird state blob"}}
    client = ControlClient(server.path, timeout=5)
    with pytest.raises(ControlError) as caught:
        await in_thread(client.restore_state, b"junk")
    assert (caught.value.code, caught.value.message) == ("bad-state", "not an efird state blob")
    assert (await in_thread(client.status))["domain"] == "vm1"  # the connection carries on
    client.close()
    assert server.handler.restored == []


async def test_a_failing_handler_is_an_internal_error_not_a_crash(server: Server) -> None:
    server.handler.fail_status = True
    raw = await Raw.open(server.path)
    reply = await raw.call({"id": 1, "op": "status"})
    assert reply["ok"] is False and reply["error"]["code"] == "internal"
    assert "the store vanished" in reply["error"]["message"]
    assert (await raw.call({"id": 2, "op": "reload-store"}))["ok"] is True


# ---- malformed input -------------------------------------------------------------------

MALFORMED: list[tuple[bytes, int | str | None, str]] = [
    (b"not json", None, "bad-json"),
    (b"\xff\xfe{}", None, "bad-json"),
    (b"[" * 100_000, None, "bad-json"),  # nesting deeper than the parser's recursion
    (b"[1, 2]", None, "bad-request"),
    (b'"status"', None, "bad-request"),
    (b"42", None, "bad-request"),
    (b'{"op": "status"}', None, "bad-request"),
    (b'{"id": 1.5, "op": "status"}', None, "bad-request"),
    (b'{"id": true, "op": "status"}', None, "bad-request"),
    (b'{"id": null, "op": "status"}', None, "bad-request"),
    (b'{"id": [1], "op": "status"}', None, "bad-request"),
    (b'{"id": 7}', 7, "bad-request"),
    (b'{"id": "x", "op": 3}', "x", "bad-request"),
    (b'{"id": 7, "op": "dance"}', 7, "unknown-op"),
    (b'{"id": 7, "op": "status", "verbose": true}', 7, "bad-argument"),
    (b'{"id": 7, "op": "restore-state"}', 7, "bad-argument"),
    (b'{"id": 7, "op": "restore-state", "state": 5}', 7, "bad-argument"),
    (b'{"id": 7, "op": "restore-state", "state": "!!not base64"}', 7, "bad-argument"),
    (b'{"id": 7, "op": "restore-state", "state": "QUJD"} trailing', None, "bad-json"),
]


async def test_malformed_lines_get_error_replies_and_the_connection_carries_on(
        server: Server) -> None:
    raw = await Raw.open(server.path)
    for line, request_id, code in MALFORMED:
        await raw.send(line + b"\n\n  \r\n")  # blank lines are skipped, not answered
        reply = await raw.line()
        assert reply["id"] == request_id and reply["ok"] is False, (line[:60], reply)
        assert reply["error"]["code"] == code, (line[:60], reply)
        assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]
    assert (await raw.call({"id": "after", "op": "status"}))["ok"] is True
    assert server.handler.restored == []


async def test_line_length_limit(nursery: trio.Nursery, tmpdir_short: Path) -> None:
    path, handler = tmpdir_short / "small.sock", FakeHandler()
    await nursery.start(partial(serve_control, path, handler, max_line=1024))
    raw = await Raw.open(path)
    exactly = b'{"id": 1, "op": "status"}'
    await raw.send(exactly + b" " * (1024 - len(exactly)) + b"\n")
    assert (await raw.line())["ok"] is True
    await raw.send(b'{"id": 2, "op": "status", "pad": "' + b"x" * 3000 + b'"}\n'
                   + p.encode_request(3, "status"))
    assert await raw.line() == {"id": None, "ok": False, "error": {
        "code": "line-too-long", "message": "request line longer than 1024 bytes"}}
    assert (await raw.line())["id"] == 3


async def test_default_line_limit_is_16_mib(server: Server) -> None:
    raw = await Raw.open(server.path)
    huge = b"x" * (p.MAX_LINE + 1) + b"\n" + p.encode_request(2, "status")
    async with trio.open_nursery() as nursery:  # the server answers before the line ends
        nursery.start_soon(raw.send, huge)
        assert (await raw.line(timeout=10))["error"]["code"] == "line-too-long"
        assert (await raw.line(timeout=10))["id"] == 2


async def test_a_last_line_without_newline_is_answered(server: Server) -> None:
    raw = await Raw.open(server.path)
    await raw.send(b'{"id": 1, "op": "status"}')
    await raw.stream.send_eof()
    assert (await raw.line())["id"] == 1


# ---- concurrency -----------------------------------------------------------------------

async def test_a_second_client_is_served_while_the_first_waits(server: Server) -> None:
    gate = server.handler.status_gate = trio.Event()
    first, second = await Raw.open(server.path), await Raw.open(server.path)
    await first.send(p.encode_request(1, "status"))
    await trio.sleep(0.05)
    assert (await second.call({"id": 2, "op": "reload-store"}))["ok"] is True
    client = ControlClient(server.path, timeout=5)
    assert await in_thread(client.save_state) == STATE
    client.close()
    gate.set()
    assert (await first.line())["id"] == 1


# ---- events ----------------------------------------------------------------------------

async def test_events_stream_to_two_subscribers(server: Server) -> None:
    raw = await Raw.open(server.path)
    assert (await raw.call({"id": 1, "op": "events"}))["ok"] is True
    client = ControlClient(server.path, timeout=5)
    got: list[dict[str, Any]] = []

    def follow() -> None:
        stream = client.events(idle_timeout=5)
        for event in stream:
            got.append(event)
            if len(got) == 3:
                stream.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(in_thread, follow)
        await wait_subscribers(server.bus, 2)
        server.bus.publish("reset", {"type": "cold"})
        server.bus.publish("exit", {"code": 0})
        await trio.to_thread.run_sync(server.bus.publish, "secure-boot-violation",
                                      {"image": "grubx64.efi"})  # from a worker thread
    raw_events = [await raw.line() for _ in range(3)]
    for events in (got, raw_events):
        assert [(e["event"], e["data"]) for e in events] == [
            ("reset", {"type": "cold"}), ("exit", {"code": 0}),
            ("secure-boot-violation", {"image": "grubx64.efi"})]
        assert all(ISO_UTC.match(e["time"]) for e in events)
    # a subscribed connection answers requests with an error, and still streams
    assert (await raw.call({"id": 2, "op": "status"}))["error"]["code"] == "subscribed"
    server.bus.publish("stopping")
    assert (await raw.line())["event"] == "stopping"
    await raw.aclose()
    await wait_gone(server.bus, 0)


async def wait_gone(bus: EventBus, count: int) -> None:
    with trio.fail_after(5):
        while bus.subscribers > count:
            await trio.sleep(0.005)


async def test_events_without_a_bus_are_unsupported(nursery: trio.Nursery,
                                                    tmpdir_short: Path) -> None:
    path = tmpdir_short / "nobus.sock"
    await nursery.start(partial(serve_control, path, FakeHandler()))
    raw = await Raw.open(path)
    assert (await raw.call({"id": 1, "op": "events"}))["error"]["code"] == "unsupported"
    assert (await raw.call({"id": 2, "op": "status"}))["ok"] is True


async def test_a_slow_subscriber_loses_the_oldest_and_never_blocks_the_daemon(
        server: Server) -> None:
    raw = await Raw.open(server.path)  # subscribes, then does not read for a while
    assert (await raw.call({"id": 1, "op": "events"}))["ok"] is True
    await wait_subscribers(server.bus, 1)
    total, pad = 3000, "x" * 1024  # ~3 MB: far more than the socket buffers hold
    started = time.monotonic()
    for seq in range(total):
        server.bus.publish("wake", {"seq": seq, "pad": pad})
        if seq % 100 == 0:
            await trio.sleep(0)  # let the pump run until the socket is full
    assert time.monotonic() - started < 2.0
    received, dropped, last = 0, 0, -1
    while received + dropped < total:
        event = await raw.line()
        if event["event"] == "events-dropped":
            assert event["data"]["count"] > 0
            dropped += event["data"]["count"]
        else:
            assert event["data"]["seq"] > last  # in order, gaps only where announced
            last = event["data"]["seq"]
            received += 1
    assert dropped > 0 and last == total - 1
    assert received + dropped == total


async def test_subscription_buffer_and_cross_thread_publish() -> None:
    bus = EventBus(capacity=8)
    early = bus.publish("reset")  # before anyone subscribed: nobody gets it
    assert early["event"] == "reset" and ISO_UTC.match(early["time"])
    with bus.subscribe() as sub:
        for seq in range(100):
            bus.publish("wake", {"seq": seq})
        first = await sub.receive()
        assert (first["event"], first["data"]) == ("events-dropped", {"count": 92})
        assert [(await sub.receive())["data"]["seq"] for _ in range(8)] == list(range(92, 100))
        assert sub.receive_nowait() is None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, bus.publish, "kexec", {"n": 1})
            with trio.fail_after(5):
                assert (await sub.receive())["event"] == "kexec"
    assert bus.subscribers == 0
    bus.publish("exit")  # nobody left: still fine


# ---- the socket itself -----------------------------------------------------------------

async def test_socket_mode_and_removal(tmpdir_short: Path) -> None:
    for mode in (0o600, 0o660):
        path = tmpdir_short / f"m{mode:o}.sock"
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_control, path, FakeHandler(), mode=mode))
            assert stat.S_ISSOCK(path.stat().st_mode)
            assert stat.S_IMODE(path.stat().st_mode) == mode
            nursery.cancel_scope.cancel()
        assert not path.exists()


async def test_stale_socket_is_replaced(tmpdir_short: Path) -> None:
    path = tmpdir_short / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # what a killed daemon leaves behind
    assert stat.S_ISSOCK(path.stat().st_mode)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_control, path, FakeHandler()))
        raw = await Raw.open(path)
        assert (await raw.call({"id": 1, "op": "status"}))["ok"] is True
        await raw.aclose()
        nursery.cancel_scope.cancel()


async def test_live_socket_and_non_socket_are_refused(server: Server,
                                                      tmpdir_short: Path) -> None:
    with pytest.raises(SocketInUseError, match=f"{server.path} is in use by another process"):
        await serve_control(server.path, FakeHandler())
    assert (await (await Raw.open(server.path)).call({"id": 1, "op": "status"}))["ok"]
    plain = tmpdir_short / "plain"
    plain.write_text("keep me")
    with pytest.raises(SocketInUseError, match="exists and is not a socket"):
        await serve_control(plain, FakeHandler())
    assert plain.read_text() == "keep me"


async def test_stop_reply_arrives_even_when_stop_cancels_the_server(
        tmpdir_short: Path) -> None:
    path, handler = tmpdir_short / "stop.sock", FakeHandler()
    async with trio.open_nursery() as nursery:
        handler.on_stop = nursery.cancel_scope.cancel  # what the daemon's stop() does
        await nursery.start(partial(serve_control, path, handler))
        client = ControlClient(path, timeout=5)
        await in_thread(client.stop)
    assert handler.stopped.is_set() and not path.exists()


async def test_cannot_connect_names_the_socket(tmpdir_short: Path) -> None:
    missing = tmpdir_short / "nobody.sock"
    with pytest.raises(ControlConnectionError, match=re.escape(str(missing))):
        ControlClient(missing, timeout=1).status()
    with pytest.raises(ControlConnectionError, match=re.escape(str(missing))):
        next(ControlClient(missing, timeout=1).events())


# ---- efird ctl -------------------------------------------------------------------------

def ctl_args(*argv: str) -> argparse.Namespace:
    """What efird/cli/main.py will do once `ctl` is registered there."""
    parser = argparse.ArgumentParser(prog="efird")
    sub = parser.add_subparsers(dest="command", required=True)
    ctl.add_parser(sub)
    return parser.parse_args(["ctl", *argv])


async def run_ctl(*argv: str) -> int:
    result: int = await in_thread(ctl.run, ctl_args(*argv))
    return result


async def test_ctl_status_human_and_json(server: Server,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_ctl("--control", str(server.path), "status") == 0
    out = capsys.readouterr().out
    assert re.search(r"^domain\s+vm1$", out, re.M)
    assert re.search(r"^store\.variables\s+3$", out, re.M)
    # options may also follow the command
    assert await run_ctl("status", "--control", str(server.path), "--json") == 0
    assert json.loads(capsys.readouterr().out)["store"] == {"path": "/s", "variables": 3}


async def test_ctl_save_and_restore(server: Server, tmpdir_short: Path,
                                    capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    control = ("--control", str(server.path))
    state_file = tmpdir_short / "vm1.state"
    assert await run_ctl(*control, "save-state", "--output", str(state_file)) == 0
    assert state_file.read_bytes() == STATE
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    assert f"saved {len(STATE)} bytes" in capsys.readouterr().out
    assert await run_ctl(*control, "save-state") == 0
    assert base64.b64decode(capsys.readouterr().out.strip()) == STATE

    state_file.write_bytes(b"EFIRD from file")
    assert await run_ctl(*control, "--json", "restore-state", "--input", str(state_file)) == 0
    assert json.loads(capsys.readouterr().out) == {"bytes": 15}
    monkeypatch.setattr(sys, "stdin", io.StringIO(base64.b64encode(b"EFIRD piped").decode()
                                                  + "\n"))
    assert await run_ctl(*control, "restore-state") == 0
    assert server.handler.restored == [b"EFIRD from file", b"EFIRD piped"]


async def test_ctl_refusal_exits_1_with_code_on_stderr(
        server: Server, tmpdir_short: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmpdir_short / "junk"
    junk.write_bytes(b"junk")
    assert await run_ctl("--control", str(server.path), "restore-state",
                         "--input", str(junk)) == 1
    captured = capsys.readouterr()
    assert "refused: bad-state: not an efird state blob" in captured.err
    assert captured.out == ""


async def test_ctl_reload_stop_and_events(server: Server,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    control = ("--control", str(server.path))
    assert await run_ctl(*control, "reload") == 0
    assert re.search(r"^changed\s+1$", capsys.readouterr().out, re.M)
    assert await run_ctl(*control, "stop") == 0
    assert "stop requested" in capsys.readouterr().out and server.handler.stopped.is_set()

    async def publish_when_subscribed() -> None:
        await wait_subscribers(server.bus, 1)
        server.bus.publish("reset", {"type": "warm"})
        server.bus.publish("shutdown", {})
        server.bus.publish("wake", {})  # after --count 2: not printed

    for flags, check in ((("--json",), _json_events), ((), _human_events)):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_when_subscribed)
            assert await run_ctl(*control, *flags, "events", "--count", "2") == 0
        check(capsys.readouterr().out.splitlines())
        await wait_gone(server.bus, 0)


def _json_events(lines: list[str]) -> None:
    events = [json.loads(line) for line in lines]
    assert [(e["event"], e["data"]) for e in events] == [("reset", {"type": "warm"}),
                                                         ("shutdown", {})]


def _human_events(lines: list[str]) -> None:
    assert len(lines) == 2
    assert re.fullmatch(r"\S+Z  reset  type=warm", lines[0]), lines
    assert re.fullmatch(r"\S+Z  shutdown", lines[1]), lines


async def test_ctl_usage_and_connection_errors_exit_2(
        tmpdir_short: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmpdir_short / "gone.sock"
    assert await run_ctl("--control", str(missing), "status") == 2
    assert f"cannot connect to efird control socket {missing}" in capsys.readouterr().err
    assert await run_ctl("status") == 2
    assert "--control PATH is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        ctl_args("--control", str(missing), "frobnicate")
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        ctl_args("--help")
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "examples:" in help_text and "restore-state --input" in help_text


async def test_ctl_as_a_process(server: Server) -> None:
    code = ("import argparse, sys; from efird.cli import ctl; "
            "parser = argparse.ArgumentParser(prog='efird'); "
            "ctl.add_parser(parser.add_subparsers(dest='command', required=True)); "
            "args = parser.parse_args(sys.argv[1:]); sys.exit(args.run(args))")
    proc = await trio.run_process(
        [sys.executable, "-c", code, "ctl", "--control", str(server.path), "--json", "status"],
        capture_stdout=True, capture_stderr=True, check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["domain"] == "vm1"


async def test_protocol_helpers_round_trip() -> None:
    request = p.parse_request(p.encode_request("a", "restore-state", state="QUJD").rstrip())
    assert (request.id, request.op, p.decode_state(request.args["state"])) == (
        "a", "restore-state", b"ABC")
    reply = p.parse_reply(p.error_reply(None, "bad-json", "nope").rstrip())
    assert isinstance(p.reply_error(reply), ControlError)
    assert p.reply_error(reply).code == "bad-json"
    with pytest.raises(ValueError):
        p.make_event("")
