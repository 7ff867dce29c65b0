#!/usr/bin/env bash
# Self-test of the Python peer against the reference Rust peer, as peers/SCENARIO.md pairs
# them, on the installed library. Builds nothing; first run:  bash peers/build.sh
# (the Rust peer, and the venv peers/python/build/venv with the shmlink wheel installed)
#
#   1. scenario: a Rust<->Rust baseline, then Python driver <-> Rust responder and
#      Rust driver <-> Python responder; all four transcripts must equal the baseline's;
#   2. every case of hostile-frames.json both ways (Python sends it / Python refuses it);
#   3. the library's unit tests (pytest), which count /proc/self/fd around every test.
#
# Exits 0 only if everything passed. Environment: SHMLINK_RUST_PEER (the Rust binary),
# PYTHON (the venv's interpreter), SHMLINK_PEER_TMPDIR (a directory on a disk, not tmpfs).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
peers=$(dirname "$here")
root=$(dirname "$peers")
rust=${SHMLINK_RUST_PEER:-$root/target/release/shmlink-peer}
python=${PYTHON:-$here/build/venv/bin/python}
limit=90  # seconds for any one process; the peers themselves give up after 60

if [ ! -x "$rust" ]; then
    echo "no Rust peer at $rust; build it: (cd $root && cargo build -p shmlink-peer --release)" >&2
    exit 2
fi
if [ ! -x "$python" ]; then
    echo "no Python venv at $python; make it: bash $peers/build.sh" >&2
    exit 2
fi

work=$(mktemp -d /tmp/shmlink-py-check.XXXXXX)
# The disk-file case needs a file that is not on tmpfs (a tmpfs file can carry seals).
tmpdir=$(mktemp -d "${SHMLINK_PEER_TMPDIR:-$root/target}/shmlink-py-check.XXXXXX")
export SHMLINK_PEER_TMPDIR=$tmpdir
export PYTHONDONTWRITEBYTECODE=1  # leave no __pycache__ in the checkout
trap 'rm -rf "$work" "$tmpdir"' EXIT

passed=0
failed=0

ok() { passed=$((passed + 1)); }
not_ok() {
    failed=$((failed + 1))
    echo "FAIL $*"
}

# pair NAME LISTENER-COMMAND... -- CONNECTOR-COMMAND...
# Starts the listener (a Rust peer with `listen`), then the connector; `{sock}` in either
# command is replaced by a fresh socket path (other addresses can be written out). Succeeds if both exit 0; shows their stderr
# otherwise. Sets $elapsed to the pair's wall time in seconds.
pair() {
    local name=$1 sock=$work/$1.sock
    shift
    local listener=() connector=()
    while [ "$1" != -- ]; do listener+=("${1//\{sock\}/$sock}"); shift; done
    shift
    for arg; do connector+=("${arg//\{sock\}/$sock}"); done

    local start=$EPOCHREALTIME
    timeout "$limit" "${listener[@]}" 2>"$work/$name.listener.err" &
    local listener_pid=$!
    if [[ " ${listener[*]} " == *" $sock "* ]]; then  # a path: wait up to 10 s for the bind
        for _ in $(seq 200); do
            [ -S "$sock" ] && break
            sleep 0.05
        done
    fi  # an '@abstract' name leaves no file; the Python peer retries connecting instead
    timeout "$limit" "${connector[@]}" 2>"$work/$name.connector.err"
    local connector_rc=$?
    wait "$listener_pid"
    local listener_rc=$?
    elapsed=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
    rm -f "$sock"
    if [ "$listener_rc" -ne 0 ] || [ "$connector_rc" -ne 0 ]; then
        not_ok "$name: listener exited $listener_rc, connector exited $connector_rc"
        sed 's/^/    /' "$work/$name.listener.err" "$work/$name.connector.err"
        return 1
    fi
}

# same_transcript LABEL ACTUAL EXPECTED: equal as parsed JSON, line by line.
same_transcript() {
    local difference
    if difference=$("$python" - "$2" "$3" 2>&1 <<'EOF'
import json, sys
actual, expected = ([json.loads(line) for line in open(path) if line.strip()]
                    for path in sys.argv[1:])
for n, (a, e) in enumerate(zip(actual, expected)):
    if a != e:
        sys.exit(f"    line {n}:\n    got      {a}\n    expected {e}")
if len(actual) != len(expected):
    sys.exit(f"    {len(actual)} lines, expected {len(expected)}")
EOF
    ); then
        ok
    else
        not_ok "$1: transcripts differ"
        echo "$difference"
    fi
}

py=("$python" "$here/peer.py")
scenario=$peers/scenario.json
cases=$peers/hostile-frames.json

echo "== scenario"
if pair rust-rust "$rust" listen responder {sock} "$work/rr.responder.jsonl" -- \
        "$rust" driver {sock} "$scenario" "$work/rr.driver.jsonl"; then
    ok
    echo "   Rust driver   <-> Rust responder   ${elapsed}s (baseline)"
else
    echo "no baseline; skipping the transcript comparisons"
fi

if pair py-driver "$rust" listen responder {sock} "$work/pd.responder.jsonl" -- \
        "${py[@]}" driver {sock} "$scenario" "$work/pd.driver.jsonl"; then
    ok
    echo "   Python driver <-> Rust responder   ${elapsed}s"
    same_transcript "Python driver: driver transcript" "$work/pd.driver.jsonl" "$work/rr.driver.jsonl"
    same_transcript "Python driver: responder transcript" "$work/pd.responder.jsonl" "$work/rr.responder.jsonl"
fi

# An abstract name here, to cover the '@' form of the command line as well.
if pair py-responder "$rust" listen driver "@shmlink-py-check-$$" "$scenario" "$work/pr.driver.jsonl" -- \
        "${py[@]}" responder "@shmlink-py-check-$$" "$work/pr.responder.jsonl"; then
    ok
    echo "   Rust driver   <-> Python responder ${elapsed}s (abstract socket name)"
    same_transcript "Python responder: driver transcript" "$work/pr.driver.jsonl" "$work/rr.driver.jsonl"
    same_transcript "Python responder: responder transcript" "$work/pr.responder.jsonl" "$work/rr.responder.jsonl"
fi

echo "== hostile cases (Python sends / Python refuses)"
mapfile -t names < <("$python" -c 'import json, sys
print("\n".join(case["name"] for case in json.load(open(sys.argv[1]))["cases"]))' "$cases")
for name in "${names[@]}"; do
    sends=FAIL refuses=FAIL
    if pair "send-$name" "$rust" listen expect-hostile {sock} "$cases" "$name" -- \
            "${py[@]}" hostile {sock} "$cases" "$name"; then
        ok
        sends=ok
    fi
    if pair "refuse-$name" "$rust" listen hostile {sock} "$cases" "$name" -- \
            "${py[@]}" expect-hostile {sock} "$cases" "$name"; then
        ok
        refuses=ok
    fi
    printf '   %-34s sends %-4s refuses %s\n' "$name" "$sends" "$refuses"
done

echo "== unit tests (pytest, on the installed package, counting file descriptors)"
if (cd "$here" && timeout "$limit" "$python" -m pytest -q 2>&1 | sed 's/^/   /'; exit "${PIPESTATUS[0]}"); then
    ok
else
    not_ok "unit tests"
fi

echo "== $passed passed, $failed failed"
[ "$failed" -eq 0 ]
