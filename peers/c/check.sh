#!/usr/bin/env bash
# peers/c/check.sh - self-test of the C peer.
#
#   1. builds peers/c (make) and the reference Rust peer (cargo, unless SHMLINK_RUST_PEER
#      names a binary to use instead);
#   2. runs the unit tests (build/test_shmlink), once more under valgrind if installed;
#   3. scenario: Rust `listen responder` <-> C driver and Rust `listen driver` <-> C
#      responder, each transcript compared (parsed, line by line) with a Rust <-> Rust
#      baseline produced here;
#   4. every case of peers/hostile-frames.json both ways: Rust `listen expect-hostile`
#      <-> C hostile, and Rust `listen hostile` <-> C expect-hostile.
#
# Exits non-zero if anything fails. Every process runs under `timeout`; socket paths are
# unique under /tmp and removed afterwards.
#
# Environment: SHMLINK_RUST_PEER (skip the cargo build, use this binary),
# SHMLINK_PEER_TMPDIR (non-tmpfs directory for the disk-file case; default under
# target/), CHECK_TIMEOUT (seconds per process, default 90), CHECK_NO_VALGRIND=1.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PEERS=$ROOT/peers
SCENARIO=$PEERS/scenario.json
HOSTILE=$PEERS/hostile-frames.json
C_PEER=$HERE/build/shmlink-peer
C_TEST=$HERE/build/test_shmlink
TIMEOUT=${CHECK_TIMEOUT:-90}
SOCKET_WAIT_STEPS=1000 # x 10 ms: how long to wait for a listener's socket to appear

WORK=$(mktemp -d /tmp/shmlink-c-check.XXXXXX) || exit 1
OWN_TMPDIR=""
if [ -z "${SHMLINK_PEER_TMPDIR:-}" ]; then
    # The disk-file case needs a file system without seals: not tmpfs. /tmp may be tmpfs.
    OWN_TMPDIR=$ROOT/target/tmp/shmlink-c-check.$$
    SHMLINK_PEER_TMPDIR=$OWN_TMPDIR
fi
export SHMLINK_PEER_TMPDIR

cleanup() {
    rm -rf "$WORK"
    [ -n "$OWN_TMPDIR" ] && rm -rf "$OWN_TMPDIR"
}
trap cleanup EXIT

PASSED=0
FAILED=0
FAILURES=()

pass() {
    PASSED=$((PASSED + 1))
    printf '  ok    %s\n' "$1"
}

fail() {
    FAILED=$((FAILED + 1))
    FAILURES+=("$1")
    printf '  FAIL  %s\n' "$1"
    shift
    for f in "$@"; do
        [ -s "$f" ] && sed 's/^/        | /' "$f" | head -20
    done
}

die() {
    echo "check.sh: $*" >&2
    exit 1
}

now() { date +%s.%N; }

# ---------------------------------------------------------------------------------------
echo "== build"
make -C "$HERE" >"$WORK/make.log" 2>&1 || { cat "$WORK/make.log"; die "make failed"; }
echo "  ok    make -C peers/c"
if [ -n "${SHMLINK_RUST_PEER:-}" ]; then
    RUST_PEER=$SHMLINK_RUST_PEER
else
    (cd "$ROOT" && cargo build -q -p shmlink-peer --release) >"$WORK/cargo.log" 2>&1 ||
        { cat "$WORK/cargo.log"; die "cargo build -p shmlink-peer --release failed"; }
    RUST_PEER=$ROOT/target/release/shmlink-peer
    echo "  ok    cargo build -p shmlink-peer --release"
fi
[ -x "$RUST_PEER" ] || die "no Rust peer at $RUST_PEER"
mkdir -p "$SHMLINK_PEER_TMPDIR" || die "cannot create $SHMLINK_PEER_TMPDIR"
if [ "$(stat -f -c %T "$SHMLINK_PEER_TMPDIR")" = tmpfs ]; then
    die "SHMLINK_PEER_TMPDIR=$SHMLINK_PEER_TMPDIR is on tmpfs; the disk-file case needs a disk"
fi

# ---------------------------------------------------------------------------------------
echo "== unit tests"
if timeout "$TIMEOUT" "$C_TEST" "$C_PEER" >"$WORK/unit.out" 2>&1; then
    pass "test_shmlink ($(tail -1 "$WORK/unit.out"))"
    grep 'echo:' "$WORK/unit.out" | sed 's/^ */        /'
else
    fail "test_shmlink" "$WORK/unit.out"
fi
if [ -n "${CHECK_NO_VALGRIND:-}" ]; then
    echo "  skip  valgrind (CHECK_NO_VALGRIND set)"
elif command -v valgrind >/dev/null 2>&1; then
    if timeout $((TIMEOUT * 4)) valgrind -q --leak-check=full --error-exitcode=1 \
        "$C_TEST" >"$WORK/valgrind.out" 2>&1; then
        pass "test_shmlink under valgrind --leak-check=full"
    else
        fail "test_shmlink under valgrind --leak-check=full" "$WORK/valgrind.out"
    fi
else
    echo "  skip  valgrind (not installed)"
fi

# ---------------------------------------------------------------------------------------
# run_pair NAME LISTENER-COMMAND... -- CONNECTOR-COMMAND...
# The listener must be started with `listen` and bind $SOCK. Both must exit 0.
# Sets PAIR_SECONDS to the connector's run time.
SOCK=$WORK/peer.sock
PAIR_SECONDS=0
run_pair() {
    local name=$1
    shift
    local -a listener=() connector=()
    while [ "$1" != "--" ]; do
        listener+=("$1")
        shift
    done
    shift
    connector=("$@")
    rm -f "$SOCK"
    timeout "$TIMEOUT" "${listener[@]}" >"$WORK/listener.out" 2>&1 &
    local lpid=$!
    local i
    for ((i = 0; i < SOCKET_WAIT_STEPS; i++)); do
        [ -S "$SOCK" ] && break
        kill -0 "$lpid" 2>/dev/null || break
        sleep 0.01
    done
    local start end crc lrc
    start=$(now)
    timeout "$TIMEOUT" "${connector[@]}" >"$WORK/connector.out" 2>&1
    crc=$?
    end=$(now)
    wait "$lpid"
    lrc=$?
    rm -f "$SOCK"
    PAIR_SECONDS=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
    if [ "$crc" -ne 0 ] || [ "$lrc" -ne 0 ]; then
        echo "listener exit $lrc, connector exit $crc" >"$WORK/status.out"
        fail "$name" "$WORK/status.out" "$WORK/listener.out" "$WORK/connector.out"
        return 1
    fi
    return 0
}

# Compare two transcripts as parsed JSON objects, line by line.
same_transcript() {
    python3 - "$1" "$2" >"$WORK/compare.out" 2>&1 <<'EOF'
import json, sys
def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
a, b = load(sys.argv[1]), load(sys.argv[2])
for i, (x, y) in enumerate(zip(a, b)):
    if x != y:
        print(f"line {i + 1} differs:\n  baseline: {x}\n  ours:     {y}")
        sys.exit(1)
if len(a) != len(b):
    print(f"{len(a)} lines in the baseline, {len(b)} in ours")
    sys.exit(1)
EOF
}

echo "== scenario transcripts"
if run_pair "Rust listen responder <-> Rust driver (baseline)" \
    "$RUST_PEER" listen responder "$SOCK" "$WORK/base-responder.jsonl" -- \
    "$RUST_PEER" driver "$SOCK" "$SCENARIO" "$WORK/base-driver.jsonl"; then
    BASE_SECONDS=$PAIR_SECONDS
    pass "Rust listen responder <-> Rust driver: baseline ($(wc -l <"$WORK/base-driver.jsonl") messages, ${BASE_SECONDS}s)"

    if run_pair "Rust listen responder <-> C driver" \
        "$RUST_PEER" listen responder "$SOCK" "$WORK/c1-responder.jsonl" -- \
        "$C_PEER" driver "$SOCK" "$SCENARIO" "$WORK/c1-driver.jsonl"; then
        C_DRIVER_SECONDS=$PAIR_SECONDS
        ok=1
        same_transcript "$WORK/base-driver.jsonl" "$WORK/c1-driver.jsonl" ||
            { ok=0; fail "C driver transcript = baseline" "$WORK/compare.out"; }
        same_transcript "$WORK/base-responder.jsonl" "$WORK/c1-responder.jsonl" ||
            { ok=0; fail "Rust responder transcript (with C driver) = baseline" "$WORK/compare.out"; }
        [ $ok = 1 ] && pass "Rust listen responder <-> C driver: both transcripts = baseline (${C_DRIVER_SECONDS}s)"
    fi

    if run_pair "Rust listen driver <-> C responder" \
        "$RUST_PEER" listen driver "$SOCK" "$SCENARIO" "$WORK/c2-driver.jsonl" -- \
        "$C_PEER" responder "$SOCK" "$WORK/c2-responder.jsonl"; then
        ok=1
        same_transcript "$WORK/base-driver.jsonl" "$WORK/c2-driver.jsonl" ||
            { ok=0; fail "Rust driver transcript (with C responder) = baseline" "$WORK/compare.out"; }
        same_transcript "$WORK/base-responder.jsonl" "$WORK/c2-responder.jsonl" ||
            { ok=0; fail "C responder transcript = baseline" "$WORK/compare.out"; }
        [ $ok = 1 ] && pass "Rust listen driver <-> C responder: both transcripts = baseline (${PAIR_SECONDS}s)"
    fi
fi

# ---------------------------------------------------------------------------------------
echo "== hostile frames"
CASES=$(python3 -c 'import json, sys
for c in json.load(open(sys.argv[1]))["cases"]:
    print(c["name"], c["expect"])' "$HOSTILE") || die "cannot read $HOSTILE"
while read -r name expect; do
    run_pair "Rust expect-hostile <-> C hostile: $name" \
        "$RUST_PEER" listen expect-hostile "$SOCK" "$HOSTILE" "$name" -- \
        "$C_PEER" hostile "$SOCK" "$HOSTILE" "$name" &&
        pass "Rust expect-hostile <-> C hostile: $name ($expect)"
    run_pair "Rust hostile <-> C expect-hostile: $name" \
        "$RUST_PEER" listen hostile "$SOCK" "$HOSTILE" "$name" -- \
        "$C_PEER" expect-hostile "$SOCK" "$HOSTILE" "$name" &&
        pass "Rust hostile <-> C expect-hostile: $name ($expect)"
done <<<"$CASES"

# ---------------------------------------------------------------------------------------
# The peer itself under valgrind over real traffic: no memory errors, no leaks, and no
# descriptor open at exit except those inherited. Valgrind hides SHA-NI, so the scenario
# is reduced to regions of at most 1 MiB to keep the portable hashing quick.
VALGRIND_CASES="more_fds_than_receiver_accepts fewer_fds_than_new_descriptors
pipe_instead_of_memfd size_smaller_than_file write_seal_without_frozen_flag wrong_magic"

# valgrind_clean LOG: valgrind reported no descriptor that was not inherited.
valgrind_clean() {
    python3 - "$1" >"$WORK/fds.out" <<'EOF'
import re, sys
lines = open(sys.argv[1]).read().splitlines()
leaked = []
for i, line in enumerate(lines):
    if re.search(r"Open (file descriptor|AF_UNIX socket) ", line) and not any(
            "<inherited from parent>" in later for later in lines[i + 1:i + 3]):
        leaked.append(line)
print("\n".join(leaked))
sys.exit(1 if leaked else 0)
EOF
}

if [ -z "${CHECK_NO_VALGRIND:-}" ] && command -v valgrind >/dev/null 2>&1; then
    echo "== C peer under valgrind"
    VG=(valgrind -q --leak-check=full --error-exitcode=1 --track-fds=yes)
    python3 - "$SCENARIO" "$WORK/small-scenario.json" <<'EOF'
import json, sys
scenario = json.load(open(sys.argv[1]))
dropped, steps = set(), []
for s in scenario["steps"]:
    if s["op"] == "send" and any(r["size"] > 1 << 20 for r in s["regions"]):
        dropped.update(r["name"] for r in s["regions"])
    elif not (s["op"] == "release" and s["name"] in dropped):
        steps.append(s)
json.dump({"version": scenario["version"], "steps": steps}, open(sys.argv[2], "w"))
EOF
    run_pair "valgrind: Rust listen responder <-> C driver" \
        "$RUST_PEER" listen responder "$SOCK" "$WORK/vg-responder.jsonl" -- \
        "${VG[@]}" --log-file="$WORK/vg-driver.log" \
        "$C_PEER" driver "$SOCK" "$WORK/small-scenario.json" "$WORK/vg-driver.jsonl" &&
        { valgrind_clean "$WORK/vg-driver.log" &&
            pass "valgrind: C driver (reduced scenario): no errors, leaks or open fds" ||
            fail "valgrind: C driver left descriptors open" "$WORK/fds.out"; }
    run_pair "valgrind: Rust listen driver <-> C responder" \
        "$RUST_PEER" listen driver "$SOCK" "$WORK/small-scenario.json" "$WORK/vg-d.jsonl" -- \
        "${VG[@]}" --log-file="$WORK/vg-responder.log" \
        "$C_PEER" responder "$SOCK" "$WORK/vg-r.jsonl" &&
        { valgrind_clean "$WORK/vg-responder.log" &&
            pass "valgrind: C responder (reduced scenario): no errors, leaks or open fds" ||
            fail "valgrind: C responder left descriptors open" "$WORK/fds.out"; }
    for name in $VALGRIND_CASES; do
        run_pair "valgrind: C expect-hostile $name" \
            "$RUST_PEER" listen hostile "$SOCK" "$HOSTILE" "$name" -- \
            "${VG[@]}" --log-file="$WORK/vg-hostile.log" \
            "$C_PEER" expect-hostile "$SOCK" "$HOSTILE" "$name" &&
            { valgrind_clean "$WORK/vg-hostile.log" &&
                pass "valgrind: C expect-hostile $name: no errors, leaks or open fds" ||
                fail "valgrind: C expect-hostile $name left descriptors open" "$WORK/fds.out"; }
    done
fi

# ---------------------------------------------------------------------------------------
echo "== summary"
echo "  $PASSED passed, $FAILED failed"
if [ -n "${BASE_SECONDS:-}" ] && [ -n "${C_DRIVER_SECONDS:-}" ]; then
    echo "  driver scenario: Rust<->Rust ${BASE_SECONDS}s, C driver<->Rust responder ${C_DRIVER_SECONDS}s"
fi
if [ "$FAILED" -ne 0 ]; then
    printf '  failed: %s\n' "${FAILURES[@]}"
    exit 1
fi
exit 0
