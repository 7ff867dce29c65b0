#!/usr/bin/env python3
"""Writes the seed corpus (fuzz/seeds/{frame,session}/) from real frames: the hex dumps
of docs/PROTOCOL.md §8 (HELLO, a MESSAGE with two new regions, RELEASE) and the cases of
peers/hostile-frames.json. Deterministic: running it again rewrites the same files, so
the committed seeds can be checked against it (`make-seeds.py --check`).

The session input format is the one `shmlink::fuzzing::session` documents
(src-rs/core/lib.rs): a mode byte, then records of `len:u16le flags:u8 bytes[len]`.
"""
import json
import re
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fuzz" / "seeds"

# The mode byte (first byte of a session input).
PEER_HELLO = 0      # the first record is offered as the peer's HELLO
UNTRUSTED = 1       # a valid HELLO is judged first; writable regions are refused
TRUSTED = 2         # a valid HELLO is judged first; writable regions are accepted

# Record flags.
DATA_TRUNC = 0x01
CONTROL_TRUNC = 0x02
SAME_FILE = 0x04    # the files are the ones this input sent before (duplicates)
SEALS_WRONG = 0x08  # the write seal is the opposite of what the descriptor says
PIPE = 0x0C         # pipes instead of memory files


def fds(n):
    """Flag bits attaching `n` (0-3) memory files to a record."""
    return min(n, 3) << 4


def protocol_dumps():
    """The three hex dumps of PROTOCOL.md §8, in order: MESSAGE, HELLO, RELEASE."""
    text = (ROOT / "docs" / "PROTOCOL.md").read_text()
    section = text.split("## 8. Example", 1)[1].split("\n## ", 1)[0]
    dumps = []
    for block in re.findall(r"```\n(.*?)```", section, re.S):
        data = bytearray()
        for line in block.splitlines():
            m = re.match(r"^[0-9a-f]{4}  ((?:[0-9a-f]{2} )*[0-9a-f]{2})", line)
            if m:
                data += bytes.fromhex(m.group(1).replace(" ", ""))
        dumps.append(bytes(data))
    assert len(dumps) == 3, "PROTOCOL.md §8 should hold three hex dumps"
    return dumps


def record(data, flags=0):
    return struct.pack("<HB", len(data), flags) + data


def header(kind, count, payload_len):
    return struct.pack("<BBHI", kind, 0, count, payload_len)


def descriptor(ident, flags, size):
    return struct.pack("<IIQ", ident, flags, size)


def message(descriptors, payload=b""):
    return header(2, len(descriptors), len(payload)) + b"".join(
        descriptor(*d) for d in descriptors) + payload


def release(descriptors):
    return header(3, len(descriptors), 0) + b"".join(
        descriptor(i, 0, s) for i, s in descriptors)


def write_seals_disagree(frame, files):
    """Whether the first file's write seal says the opposite of its descriptor's FROZEN."""
    if len(frame) < 24 or not files or files[0].get("type") != "memfd":
        return False
    frozen = struct.unpack_from("<I", frame, 12)[0] & 2 != 0
    return frozen != ("write" in files[0].get("seals", []))


def seeds():
    msg, hello, rel = protocol_dumps()
    frame, session = {}, {}
    for name, data in (("doc-message", msg), ("doc-hello", hello), ("doc-release", rel)):
        frame[name] = data

    eof = record(b"")
    # PROTOCOL.md §8 as one connection: HELLO, the MESSAGE with its two files (region 1
    # of 4096 bytes, region 2 frozen of 65536), a MESSAGE that refers to both by id,
    # RELEASE of region 1, end-of-file.
    by_id = message([(1, 4, 4096), (2, 2, 65536)], b"again")
    session["doc-exchange"] = bytes([PEER_HELLO]) + record(hello) + record(msg, fds(2)) \
        + record(by_id) + record(rel) + eof
    session["doc-exchange-untrusted"] = bytes([UNTRUSTED]) + record(msg, fds(2)) + record(rel)
    # A region sent again under a new id (the same file): §5.2 rule 6.
    session["same-file-new-id"] = bytes([TRUSTED]) + record(message([(1, 1, 4096)]), fds(1)) \
        + record(message([(2, 1, 4096)]), fds(1) | SAME_FILE) + record(release([(1, 4096)])) \
        + record(release([(2, 4096)]))
    # Released, then bound again with the same id and the same file.
    session["rebind-after-release"] = bytes([TRUSTED]) \
        + record(message([(7, 1, 8192)], b"x"), fds(1)) + record(release([(7, 8192)])) \
        + record(message([(7, 1, 8192)], b"y"), fds(1) | SAME_FILE) + eof
    # Three new regions in one frame, one repeated by id in the same frame (§5.2 rule 4).
    session["three-new-one-repeated"] = bytes([TRUSTED]) + record(message(
        [(1, 1, 4096), (2, 3, 4096), (1, 4, 4096), (3, 5, 12288)], b"p"), fds(3))
    session["wrong-write-seals"] = bytes([TRUSTED]) + record(message([(1, 3, 4096)]),
                                                             fds(1) | SEALS_WRONG)
    session["pipe"] = bytes([TRUSTED]) + record(message([(1, 1, 4096)]), fds(1) | PIPE)

    cases = json.loads((ROOT / "peers" / "hostile-frames.json").read_text())["cases"]
    for case in cases:
        name = "hostile-" + case["name"].replace("_", "-")
        data = bytes.fromhex(case["frame"]) + bytes(case.get("pad", 0))
        if data:
            frame[name] = data
        elif case["hello"] not in ("valid", "none"):
            frame[name] = bytes.fromhex(case["hello"])  # a HELLO of another magic or version
        count = len(case["fds"])
        flags = fds(count)
        if count > 3 or case["expect"] == "ERR_SHMLINK_FDS_TRUNCATED":
            flags = fds(3) | CONTROL_TRUNC
        if any(f.get("type") in ("pipe", "socket", "file") for f in case["fds"]):
            flags |= PIPE
        elif write_seals_disagree(data, case["fds"]):
            flags |= SEALS_WRONG
        if len(data) > 0xFFFF:
            data, flags = data[:0xFFFF], flags | DATA_TRUNC
        if case["hello"] == "valid":
            session[name] = bytes([TRUSTED]) + record(data, flags)
        elif case["hello"] == "none":
            session[name] = bytes([PEER_HELLO]) + record(data, flags)
        else:
            session[name] = bytes([PEER_HELLO]) + record(bytes.fromhex(case["hello"])) \
                + record(data, flags)
    return {"frame": frame, "session": session}


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for target, files in seeds().items():
        directory = OUT / target
        directory.mkdir(parents=True, exist_ok=True)
        for path in sorted(directory.iterdir()):
            if path.name not in files:
                if check:
                    stale.append(str(path.relative_to(ROOT)))
                else:
                    path.unlink()
        for name, data in sorted(files.items()):
            path = directory / name
            if path.exists() and path.read_bytes() == data:
                continue
            if check:
                stale.append(str(path.relative_to(ROOT)))
            else:
                path.write_bytes(data)
    if stale:
        sys.exit("stale seeds (run fuzz/make-seeds.py): " + ", ".join(stale))


if __name__ == "__main__":
    main()
