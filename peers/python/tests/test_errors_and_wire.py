"""Error codes and the wire format (PROTOCOL.md §2, §3, §8), without sockets."""

from __future__ import annotations

import pickle
import re

import pytest

import shmlink
from shmlink import ShmlinkError, wire
from shmlink.errors import ERROR_CODES

from conftest import REPO, message


def test_every_code_is_exported_with_its_exact_string() -> None:
    assert len(ERROR_CODES) == len(set(ERROR_CODES)) == 27
    for code in ERROR_CODES:
        assert code.startswith("ERR_SHMLINK_")
        assert getattr(shmlink, code[len("ERR_SHMLINK_"):]) == code
    assert shmlink.TIMED_OUT == "ERR_SHMLINK_TIMED_OUT"
    assert shmlink.INVALID_ARG == "ERR_SHMLINK_INVALID_ARG"


def test_codes_are_those_of_errors_md_in_its_order() -> None:
    errors_md = REPO / "docs" / "ERRORS.md"
    if not errors_md.exists():
        pytest.skip("docs/ERRORS.md is not here (not a checkout)")
    listed = re.findall(r"^\| `(ERR_SHMLINK_[A-Z_]+)` \|", errors_md.read_text(), re.M)
    assert tuple(listed) == ERROR_CODES


def test_argument_errors_are_also_type_or_value_errors() -> None:
    with pytest.raises(TypeError) as type_error:
        shmlink.Region.create("1")  # type: ignore[arg-type]
    assert type_error.value.code == shmlink.INVALID_ARG  # type: ignore[attr-defined]
    with pytest.raises(ValueError) as value_error:
        shmlink.Region.create(0)
    assert isinstance(value_error.value, ShmlinkError)
    assert value_error.value.code == shmlink.INVALID_ARG


def test_errors_carry_syscall_and_errno_and_survive_pickling() -> None:
    with pytest.raises(ShmlinkError) as caught:
        shmlink.Endpoint.connect("/nonexistent/shmlink.sock")
    error = caught.value
    assert (error.code, error.syscall, error.errno) == (shmlink.OS, "connect", 2)
    assert "ENOENT" in str(error) and str(error).startswith("ERR_SHMLINK_OS: ")
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), again.code, again.message, again.syscall, again.errno) == (
        ShmlinkError, error.code, error.message, "connect", 2)
    invalid = pickle.loads(pickle.dumps(shmlink.InvalidTypeError("bad")))
    assert isinstance(invalid, TypeError) and invalid.code == shmlink.INVALID_ARG
    assert shmlink.is_shmlink_error(error) and not shmlink.is_shmlink_error(ValueError("x"))


# -- the wire format ------------------------------------------------------------------

def test_hello_and_example_frames_are_byte_exact() -> None:
    assert wire.hello_frame() == bytes.fromhex(
        "01 00 00 00 14 00 00 00 53 48 4d 4c 49 4e 4b 00 02 00 20 00 00 00 01 00"
        "00 00 00 00")
    assert message([(1, 5, 4096), (2, 3, 65536)], b"hello") == bytes.fromhex(
        "02 00 02 00 05 00 00 00 01 00 00 00 05 00 00 00"
        "00 10 00 00 00 00 00 00 02 00 00 00 03 00 00 00"
        "00 00 01 00 00 00 00 00 68 65 6c 6c 6f")


def test_parse_round_trips() -> None:
    frame = wire.parse(memoryview(message([(7, wire.FLAG_NEW | wire.FLAG_FROZEN, 4096)], b"x")))
    assert frame.header == wire.Header(wire.KIND_MESSAGE, 1, 1)
    assert frame.descriptors == [wire.Descriptor(7, 3, 4096)]
    assert frame.descriptors[0].new and frame.descriptors[0].frozen
    assert bytes(frame.payload) == b"x"
    assert wire.parse_first(memoryview(wire.hello_frame(5, 100))) == wire.Announced(5, 100)


@pytest.mark.parametrize("record, words", [
    ("02000000", "shorter than"),
    ("0201000000000000", "header flags"),
    ("0200000005000000", "the record has 8 bytes"),
    ("0200010000000000" + "00000000" "01000000" "0010000000000000", "id 0"),
    ("0200010000000000" + "01000000" "08000000" "0010000000000000", "unknown flags"),
    ("0200010000000000" + "01000000" "01000000" "0000000000000000", "size 0"),
    ("0300010000000000" + "01000000" "02000000" "0010000000000000", "carries flags"),
    ("0300000001000000" "00", "carries a payload"),
    ("0900000000000000", "unknown frame kind"),
    ("0100000000000000", "HELLO frame must"),
])
def test_parse_refuses_malformed_frames(record: str, words: str) -> None:
    with pytest.raises(ShmlinkError) as caught:
        wire.parse(memoryview(bytes.fromhex(record)))
    assert caught.value.code == shmlink.PROTOCOL_VIOLATION
    assert words in caught.value.message


def test_first_frame_judges_magic_and_version_before_anything_else() -> None:
    hello = bytearray(wire.hello_frame())
    wrong_magic = bytearray(hello)
    wrong_magic[8:16] = b"NOTSHMLK"
    wrong_magic[1] = 0x80  # header flags set as well: the magic decides first
    wrong_version = bytearray(hello)
    wrong_version[16] = 3
    wrong_version[4] = 99  # and a payload length that does not add up
    flags_only = bytearray(hello)
    flags_only[1] = 1
    for record, code in [(wrong_magic, shmlink.PEER_INCOMPATIBLE),
                         (wrong_version, shmlink.PEER_INCOMPATIBLE),
                         (flags_only, shmlink.PROTOCOL_VIOLATION),
                         (bytearray(message([], b"early")), shmlink.PROTOCOL_VIOLATION),
                         (bytearray(wire.hello_frame(0, 10)), shmlink.PROTOCOL_VIOLATION),
                         (bytearray(wire.hello_frame(254, 10)), shmlink.PROTOCOL_VIOLATION),
                         (bytearray(wire.hello_frame(32, 65537)), shmlink.PROTOCOL_VIOLATION)]:
        with pytest.raises(ShmlinkError) as caught:
            wire.parse_first(memoryview(record))
        assert caught.value.code == code, bytes(record).hex()


def test_a_version_1_peer_is_incompatible_and_told_to_upgrade() -> None:
    v1_hello = bytes.fromhex("01 00 00 00 10 00 00 00 53 48 4d 4c 49 4e 4b 00 01 00 20 00 00 00 01 00")
    with pytest.raises(ShmlinkError) as caught:
        wire.parse_first(memoryview(v1_hello))
    assert caught.value.code == shmlink.PEER_INCOMPATIBLE
    assert "version 1" in caught.value.message and "upgrade the peer" in caught.value.message
