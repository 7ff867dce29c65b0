"""The interop peer program (peers/python/peer.py), in-process, on the installed library."""

from __future__ import annotations

import importlib.util
import json
import re
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from shmlink import Endpoint, Region

from conftest import PEERS

PEER_PY = Path(__file__).resolve().parent.parent / "peer.py"


@pytest.fixture(scope="module")
def peer() -> ModuleType:
    if not PEER_PY.exists():
        pytest.skip("peer.py is not here (not a checkout)")
    spec = importlib.util.spec_from_file_location("shmlink_peer", PEER_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def slow_pattern(seed: int, length: int) -> bytes:
    """SCENARIO.md's formula, literally."""
    return bytes((seed * 131 + (k % 4096) * 7 + (k // 4096) * 13) % 256 for k in range(length))


def test_the_peer_uses_only_the_public_api() -> None:
    source = PEER_PY.read_text()
    assert not re.search(r"shmlink\._|from shmlink\.(_|endpoint|region|server|errors|limits)",
                         source)
    assert "import shmlink" in source


def test_pattern_matches_the_formula(peer: ModuleType) -> None:
    for seed in (0, 1, 255, 256, 1000, 5039, 2**32 - 1):
        assert bytes(peer.pattern(seed, 70000)) == slow_pattern(seed, 70000), seed


def test_fill_beyond_one_period(peer: ModuleType) -> None:
    size = 3 * (1 << 20) + 12345
    with Region.create(size) as region:
        peer.fill(region, 77)
        assert region.read() == slow_pattern(77, size)


def test_driver_and_responder_in_process(peer: ModuleType) -> None:
    scenario_path = PEERS / "scenario.json"
    if not scenario_path.exists():
        pytest.skip("peers/scenario.json is not here (not a checkout)")
    steps = json.loads(scenario_path.read_text())["steps"]
    a, b = Endpoint.pair()
    responder_out: list[Any] = []
    failures: list[BaseException] = []

    def respond() -> None:
        try:
            responder_out.extend(peer.respond(b))
        except BaseException as error:  # reported below
            failures.append(error)
        finally:
            b.close()

    thread = threading.Thread(target=respond)
    thread.start()
    leftovers: list[Region] = []
    try:
        with a:
            transcript, leftovers = peer.drive(a, steps)
    finally:
        for region in leftovers:
            region.close()
    thread.join(60)
    assert not failures, failures
    sends = sum(step["op"] == "send" for step in steps)
    assert len(transcript) == len(responder_out) == sends
    assert [line["n"] for line in responder_out] == list(range(sends))
    # Ids count up from 1 on each side, NEW exactly once per binding.
    first_ids = [r["id"] for line in responder_out for r in line["regions"] if r["new"]]
    assert first_ids[:3] == [1, 2, 3]


def test_command_line_usage(peer: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert peer.main(["peer.py"]) == 1
    assert peer.main(["peer.py", "driver", "only-one-arg"]) == 1
    assert peer.main(["peer.py", "echo", "/" + "x" * 200]) == 1  # fails at once, no retry
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("python peer echo: InvalidValueError: ERR_SHMLINK_INVALID_ARG")


def test_echo_returns_payload_and_regions_untransferred(peer: ModuleType) -> None:
    a, b = Endpoint.pair()
    thread = threading.Thread(target=lambda: (peer.echo(b), b.close()))
    thread.start()
    with a, Region.create(3 * 4096) as region:
        region.write(0, b"echoed")
        for _ in range(3):
            a.send(b"ping", regions=[region])
            reply = a.recv(timeout=30)
            assert reply.payload == b"ping" and reply.regions == [region]
            assert not reply.descriptors[0].transferred
    thread.join(30)
    assert not thread.is_alive()
