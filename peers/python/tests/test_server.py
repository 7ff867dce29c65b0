"""listen/connect, the credential filters, the trust policy, inherited() and a child process."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import shmlink
from shmlink import Endpoint, Region, ShmlinkError, listen

from conftest import seqpacket_pair


def code_of(call: object) -> str:
    with pytest.raises(ShmlinkError) as caught:
        call()  # type: ignore[operator]
    return caught.value.code


@pytest.fixture
def path(tmp_path: Path) -> Iterator[str]:
    yield str(tmp_path / "s.sock")


def test_listen_accept_connect(path: str) -> None:
    with listen(path) as server:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert server.path == path and server.fileno() > 2
        with Endpoint.connect(path) as client, server.accept(timeout=5) as accepted:
            client.send(b"hi")
            assert accepted.recv(timeout=5).payload == b"hi"
            assert accepted.peer == (os.getpid(), os.getuid(), os.getgid())
            assert client.peer.pid == os.getpid()
    assert not os.path.exists(path), "close() removes the socket file"
    assert code_of(lambda: server.accept(timeout=0)) == shmlink.CLOSED


def test_abstract_names(path: str) -> None:
    name = f"\0shmlink-test-{os.getpid()}"
    with listen(name) as server, Endpoint.connect(name) as client:
        with server.accept(timeout=5) as accepted:
            accepted.send(b"abstract")
            assert client.recv(timeout=5).payload == b"abstract"


def test_a_stale_socket_file_is_replaced_and_a_live_one_is_not(path: str) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(path)
    stale.close()  # the file stays; nobody listens
    with listen(path) as server:
        with pytest.raises(ShmlinkError) as caught:
            listen(path)
        assert (caught.value.code, caught.value.syscall, caught.value.errno) == (
            shmlink.OS, "bind", 98)
        with Endpoint.connect(path), server.accept(timeout=5):
            pass


def test_connect_failures_say_what_failed(path: str) -> None:
    with pytest.raises(ShmlinkError) as missing:
        Endpoint.connect(path)
    assert (missing.value.code, missing.value.syscall, missing.value.errno) == (
        shmlink.OS, "connect", 2)
    assert code_of(lambda: Endpoint.connect(path + "x" * 200)) == shmlink.INVALID_ARG
    assert code_of(lambda: Endpoint.connect(42)) == shmlink.INVALID_ARG
    assert code_of(lambda: listen(path, max_pending=0)) == shmlink.INVALID_ARG
    assert code_of(lambda: listen(path, allow="everyone")) == shmlink.INVALID_ARG


def test_accept_times_out_and_a_waiting_accept_ends_on_close(path: str) -> None:
    server = listen(path)
    assert code_of(lambda: server.accept(timeout=0.05)) == shmlink.TIMED_OUT
    outcome: list[str] = []

    def wait() -> None:
        outcome.append(code_of(server.accept))

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.1)
    server.close()
    waiter.join(5)
    assert outcome == [shmlink.CLOSED]
    server.close()


def test_server_iteration_ends_when_closed(path: str) -> None:
    server = listen(path)
    accepted: list[Endpoint] = []
    worker = threading.Thread(target=lambda: accepted.extend(server))
    worker.start()
    clients = [Endpoint.connect(path) for _ in range(3)]
    deadline = time.monotonic() + 5
    while len(accepted) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.close()
    worker.join(5)
    assert len(accepted) == 3 and not worker.is_alive()
    for endpoint in accepted + clients:
        endpoint.close()


def test_the_server_filter_is_checked_before_anything_is_sent(path: str) -> None:
    other = os.getuid() + 1
    with listen(path) as server:
        with pytest.raises(ShmlinkError) as caught:
            Endpoint.connect(path, server=[other])
        assert caught.value.code == shmlink.PEER_REJECTED
        with Endpoint.connect(path, server=[os.getuid()]):
            pass
        with Endpoint.connect(path, server=shmlink.ANY_USER):
            pass
        # The refused connection's server side reads end-of-file before any record.
        with server.accept(timeout=5) as refused_one:
            assert code_of(lambda: refused_one.recv(timeout=5)) == shmlink.PEER_CLOSED
        server.accept(timeout=5).close()
        server.accept(timeout=5).close()


def test_the_allow_filter_shuts_other_users_out_unread(path: str) -> None:
    with listen(path, allow=[os.getuid() + 1]) as server:
        client = Endpoint.connect(path)
        with client:
            assert code_of(lambda: server.accept(timeout=0.2)) == shmlink.TIMED_OUT
            assert server.rejected == 1
            assert code_of(lambda: client.recv(timeout=5)) == shmlink.PEER_CLOSED


@pytest.mark.parametrize("frozen, accept_writable, expected", [
    (True, False, None),
    (False, False, shmlink.REGION_WRITABLE),
    (False, True, None),
])
def test_trust_policy_of_connections_made_by_name(path: str, frozen: bool,
                                                  accept_writable: bool,
                                                  expected: str) -> None:
    with listen(path, accept_writable=accept_writable) as server:
        with Endpoint.connect(path) as client, server.accept(timeout=5) as accepted, \
                Region.create(4096) as region:
            if frozen:
                region.freeze()
            client.send(b"", regions=[region])
            if expected is None:
                received = accepted.recv(timeout=5).regions[0]
                received.close()
            else:
                assert code_of(lambda: accepted.recv(timeout=5)) == expected
                assert code_of(lambda: client.recv(timeout=5)) == shmlink.PEER_CLOSED
    # And the client side of connect() refuses writable regions from the server too.
    with listen(path) as server, Endpoint.connect(path) as client, \
            server.accept(timeout=5) as accepted, Region.create(4096) as region:
        accepted.send(b"", regions=[region])
        assert code_of(lambda: client.recv(timeout=5)) == shmlink.REGION_WRITABLE


# -- inherited() -----------------------------------------------------------------------

def test_inherited_errors_say_what_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHMLINK_FD", raising=False)
    with pytest.raises(ValueError) as unset:
        shmlink.inherited()
    assert unset.value.code == shmlink.INVALID_ARG  # type: ignore[attr-defined]
    assert "SHMLINK_FD is not set" in str(unset.value)
    for value in ("abc", "", "1", "-4"):
        monkeypatch.setenv("SHMLINK_FD", value)
        with pytest.raises(ShmlinkError) as caught:
            shmlink.inherited()
        assert caught.value.code == shmlink.INVALID_ARG
        assert "not a descriptor number above 2" in str(caught.value)
    read_end, write_end = os.pipe()
    try:
        spare = os.dup(read_end)
        os.close(spare)
        monkeypatch.setenv("SHMLINK_FD", str(spare))
        with pytest.raises(ShmlinkError) as not_open:
            shmlink.inherited()
        assert "not open" in str(not_open.value) and "wrapper" in str(not_open.value)
        monkeypatch.setenv("SHMLINK_FD", str(read_end))
        with pytest.raises(ShmlinkError) as pipe:
            shmlink.inherited()
        assert pipe.value.code == shmlink.INVALID_ARG
        assert "a pipe" in str(pipe.value) and "wrapper" in str(pipe.value)
        os.fstat(read_end)  # still open: it was not ours
    finally:
        os.close(read_end)
        os.close(write_end)


def test_inherited_takes_the_socket_and_forgets_the_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ours, theirs = seqpacket_pair()
    monkeypatch.setenv("SHMLINK_FD", str(ours.detach()))
    with theirs, shmlink.inherited() as endpoint:
        assert "SHMLINK_FD" not in os.environ
        theirs.sendmsg([shmlink.wire.hello_frame()])
        assert endpoint.handshake(timeout=5) == (32, 65536)
        assert not os.get_inheritable(endpoint.fileno())


def test_a_child_process_gets_its_endpoint_from_shmlink_fd() -> None:
    """The parent side of Node's spawnWithEndpoint(), in Python: the child's socket is not
    at fd 3 (here it is whatever number the parent had), so SHMLINK_FD names it."""
    child_code = textwrap.dedent("""
        import shmlink
        endpoint = shmlink.inherited()
        for message in endpoint:
            region = message.regions[0]
            view = memoryview(region)
            view[0] = 255 - view[0]
            endpoint.send(message.payload[::-1], transfer=message.regions)
        """)
    parent, child = seqpacket_pair()
    env = dict(os.environ, SHMLINK_FD=str(child.fileno()))
    process = subprocess.Popen([sys.executable, "-c", child_code], env=env,
                               pass_fds=[child.fileno()])
    child.close()
    with Endpoint.from_fd(parent) as endpoint, Region.create(4096) as region:
        for n in range(3):
            region.write(0, bytes([n]))
            endpoint.send(b"abc", transfer=[region], timeout=30)
            reply = endpoint.recv(timeout=30)
            assert reply.payload == b"cba" and reply.regions == [region]
            assert region.read(0, 1) == bytes([255 - n])
    assert process.wait(30) == 0


def test_node_style_aliases(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with Endpoint.listen(path) as server, Endpoint.connect(path), server.accept(timeout=5):
        assert isinstance(server, shmlink.Server)
    ours, theirs = seqpacket_pair()
    monkeypatch.setenv("SHMLINK_FD", str(ours.detach()))
    with theirs, Endpoint.inherited() as endpoint:
        assert not endpoint.closed


def test_a_full_queue_makes_connect_would_block(path: str) -> None:
    with listen(path, max_pending=1) as server:
        clients: list[Endpoint] = []
        try:
            with pytest.raises(ShmlinkError) as caught:
                for _ in range(20):
                    clients.append(Endpoint.connect(path))
            assert (caught.value.code, caught.value.errno) == (shmlink.WOULD_BLOCK, 11)
            assert clients, "the queue held some before it was full"
            server.accept(timeout=5).close()
            clients.append(Endpoint.connect(path))  # room again
        finally:
            for client in clients:
                client.close()
        # A live listener is not taken for a stale one, even with its queue full.
        with pytest.raises(ShmlinkError) as in_use:
            listen(path)
        assert in_use.value.errno == 98
