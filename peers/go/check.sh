#!/usr/bin/env bash
# Self-test of the Go shmlink peer.
#
#   peers/go/check.sh
#
# Builds the peer, runs gofmt/go vet/go test, then pairs it with the
# reference Rust peer (target/release/shmlink-peer, built here with cargo):
#   1. the scenario both ways, transcripts compared with a Rust<->Rust
#      baseline (parsed JSON, line by line);
#   2. every case of peers/hostile-frames.json both ways;
#   3. a few negative controls, so that a harness that always passes would
#      be noticed.
# Exits non-zero on any failure. Environment:
#   RUST_PEER   use this Rust peer binary instead of building one
#   PEER_TIMEOUT  seconds allowed per peer process (default 90)
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
peers=$root/peers
scenario=$peers/scenario.json
frames=$peers/hostile-frames.json
go_peer=$here/build/shmlink-peer
rust_peer=${RUST_PEER:-$root/target/release/shmlink-peer}
limit=${PEER_TIMEOUT:-90}

pass=0
failed=()
ok() { pass=$((pass + 1)); echo "  ok   $*"; }
bad() { failed+=("$*"); echo "  FAIL $*"; }

work=$(mktemp -d /tmp/shmlink-go-check.XXXXXX)
# Regular files for the disk-file case must not be on tmpfs: a tmpfs file
# can carry seals and would be refused as unsealed, not as not-a-memfd.
export SHMLINK_PEER_TMPDIR=$root/target/shmlink-go-check.$$
mkdir -p "$SHMLINK_PEER_TMPDIR"
cleanup() { [ -n "${KEEP_WORK:-}" ] && echo "work dir kept: $work" || rm -rf "$work"; rm -rf "$SHMLINK_PEER_TMPDIR"; }
trap cleanup EXIT

echo "== build, gofmt, vet, test"
cd "$here" || exit 1
if go build -o build/shmlink-peer ./cmd/shmlink-peer; then ok "go build"; else bad "go build"; fi
unformatted=$(gofmt -l .)
if [ -z "$unformatted" ]; then ok "gofmt"; else bad "gofmt: $unformatted"; fi
if go vet ./...; then ok "go vet"; else bad "go vet"; fi
if go test -count=1 ./... >"$work/gotest.log" 2>&1; then
    ok "go test"
else
    cat "$work/gotest.log"
    bad "go test"
fi
[ -x "$go_peer" ] || { echo "no Go peer binary; giving up"; exit 1; }

if [ -z "${RUST_PEER:-}" ]; then
    echo "== build the reference Rust peer"
    if (cd "$root" && cargo build -q -p shmlink-peer --release); then ok "cargo build"; else bad "cargo build"; fi
fi
[ -x "$rust_peer" ] || { echo "no Rust peer at $rust_peer; giving up"; exit 1; }

fstype=$(stat -f -c %T "$SHMLINK_PEER_TMPDIR")
[ "$fstype" = tmpfs ] && echo "warning: $SHMLINK_PEER_TMPDIR is on tmpfs; disk_file_instead_of_memfd will fail"

n=0
# run_pair LABEL SOCKET -- LISTENER... -- CONNECTOR...
# Starts the listener, waits for its socket, runs the connector, and sets
# pair_rc to "L C" (the two exit codes) and pair_ms to the connector's
# wall time. Stderr of each side goes to $work/LABEL.{l,c}.err.
run_pair() {
    local label=$1 sock=$2
    shift 3
    local lcmd=() ccmd=()
    while [ "$1" != -- ]; do lcmd+=("$1"); shift; done
    shift
    ccmd=("$@")
    timeout "$limit" "${lcmd[@]}" 2>"$work/$label.l.err" &
    local lpid=$!
    local i
    for i in $(seq 200); do
        if [[ $sock == @* ]]; then
            grep -q " ${sock}\$" /proc/net/unix && break
        else
            [ -S "$sock" ] && break
        fi
        kill -0 "$lpid" 2>/dev/null || break
        sleep 0.05
    done
    local t0 t1 crc lrc
    t0=$(date +%s%N)
    timeout "$limit" "${ccmd[@]}" 2>"$work/$label.c.err"
    crc=$?
    t1=$(date +%s%N)
    wait "$lpid"
    lrc=$?
    [[ $sock == @* ]] || rm -f "$sock"
    pair_rc="$lrc $crc"
    pair_ms=$(((t1 - t0) / 1000000))
}

# explain LABEL: print the stderr of both sides of a failed pair.
explain() {
    sed 's/^/      listener: /' "$work/$1.l.err"
    sed 's/^/      connector: /' "$work/$1.c.err"
}

same_transcript() {
    python3 - "$1" "$2" <<'EOF'
import json, sys
def load(p):
    with open(p) as f:
        return [json.loads(l) for l in f if l.strip()]
try:
    a, b = load(sys.argv[1]), load(sys.argv[2])
except Exception as e:
    print(f"      cannot read transcripts: {e}")
    sys.exit(1)
if len(a) != len(b):
    print(f"      {len(a)} lines vs {len(b)} lines")
    sys.exit(1)
for i, (x, y) in enumerate(zip(a, b)):
    if x != y:
        print(f"      line {i + 1} differs:\n        {x}\n        {y}")
        sys.exit(1)
EOF
}

# scenario LABEL LISTENER-PEER LISTENER-ROLE CONNECTOR-PEER [SOCKET]
# Runs the scenario with one side listening; leaves the transcripts in
# $work/LABEL.driver.jsonl and $work/LABEL.responder.jsonl.
scenario_pair() {
    local label=$1 lpeer=$2 lrole=$3 cpeer=$4
    local sock=${5:-$work/$label.sock}
    local d=$work/$label.driver.jsonl r=$work/$label.responder.jsonl
    if [ "$lrole" = responder ]; then
        run_pair "$label" "$sock" -- "$lpeer" listen responder "$sock" "$r" -- "$cpeer" driver "$sock" "$scenario" "$d"
    else
        run_pair "$label" "$sock" -- "$lpeer" listen driver "$sock" "$scenario" "$d" -- "$cpeer" responder "$sock" "$r"
    fi
    if [ "$pair_rc" = "0 0" ]; then
        ok "$label (exit 0 0, ${pair_ms} ms)"
        return 0
    fi
    bad "$label (exit $pair_rc)"
    explain "$label"
    return 1
}

compare() {
    local what=$1 a=$2 b=$3
    if same_transcript "$a" "$b"; then ok "$what"; else bad "$what"; fi
}

echo "== scenario"
scenario_pair rust-rust "$rust_peer" responder "$rust_peer"
rr_ms=$pair_ms
scenario_pair rust-resp_go-driver "$rust_peer" responder "$go_peer"
gd_ms=$pair_ms
compare "go driver transcript = baseline" "$work/rust-rust.driver.jsonl" "$work/rust-resp_go-driver.driver.jsonl"
compare "rust responder transcript (go driver) = baseline" "$work/rust-rust.responder.jsonl" "$work/rust-resp_go-driver.responder.jsonl"
scenario_pair rust-driver_go-resp "$rust_peer" driver "$go_peer"
gr_ms=$pair_ms
compare "go responder transcript = baseline" "$work/rust-rust.responder.jsonl" "$work/rust-driver_go-resp.responder.jsonl"
compare "rust driver transcript (go responder) = baseline" "$work/rust-rust.driver.jsonl" "$work/rust-driver_go-resp.driver.jsonl"
# The abstract namespace, and Go with itself.
scenario_pair abstract_rust-resp_go-driver "$rust_peer" responder "$go_peer" "@shmlink-go-check-$$"
compare "go driver transcript over @abstract = baseline" "$work/rust-rust.driver.jsonl" "$work/abstract_rust-resp_go-driver.driver.jsonl"
scenario_pair go-go "$go_peer" responder "$go_peer"
gg_ms=$pair_ms
compare "go<->go driver transcript = baseline" "$work/rust-rust.driver.jsonl" "$work/go-go.driver.jsonl"
compare "go<->go responder transcript = baseline" "$work/rust-rust.responder.jsonl" "$work/go-go.responder.jsonl"

echo "== hostile cases"
mapfile -t cases < <(python3 -c 'import json,sys; [print(c["name"]) for c in json.load(open(sys.argv[1]))["cases"]]' "$frames")
[ "${#cases[@]}" -gt 0 ] || bad "no hostile cases found in $frames"
for c in "${cases[@]}"; do
    n=$((n + 1))
    s=$work/h$n.sock
    run_pair "h$n-a" "$s" -- "$rust_peer" listen expect-hostile "$s" "$frames" "$c" -- "$go_peer" hostile "$s" "$frames" "$c"
    if [ "$pair_rc" = "0 0" ]; then ok "go hostile -> rust expect-hostile: $c"; else bad "go hostile -> rust expect-hostile: $c (exit $pair_rc)"; explain "h$n-a"; fi
    run_pair "h$n-b" "$s" -- "$rust_peer" listen hostile "$s" "$frames" "$c" -- "$go_peer" expect-hostile "$s" "$frames" "$c"
    if [ "$pair_rc" = "0 0" ]; then ok "rust hostile -> go expect-hostile: $c"; else bad "rust hostile -> go expect-hostile: $c (exit $pair_rc)"; explain "h$n-b"; fi
done

echo "== negative controls (each must fail)"
# The same frames with every expected code swapped for a wrong one: an
# expect-hostile that accepts any refusal would pass the loop above.
wrong=$work/wrong-frames.json
python3 - "$frames" "$wrong" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
for c in d["cases"]:
    c["expect"] = ("ERR_SHMLINK_REGION_SIZE_MISMATCH" if c["expect"] != "ERR_SHMLINK_REGION_SIZE_MISMATCH"
                   else "ERR_SHMLINK_PROTOCOL_VIOLATION")
json.dump(d, open(sys.argv[2], "w"))
EOF
for c in memfd_without_seals pipe_instead_of_memfd more_fds_than_receiver_accepts wrong_magic end_of_file_after_hello size_larger_than_file; do
    n=$((n + 1))
    s=$work/h$n.sock
    run_pair "neg$n" "$s" -- "$rust_peer" listen hostile "$s" "$frames" "$c" -- "$go_peer" expect-hostile "$s" "$wrong" "$c"
    set -- $pair_rc
    if [ "$2" = 1 ]; then ok "go expect-hostile refuses a wrong expectation: $c"; else bad "go expect-hostile accepted a wrong expectation: $c (exit $pair_rc)"; fi
done
# A transcript that differs must be noticed by the comparison.
head -n 3 "$work/rust-rust.driver.jsonl" >"$work/short.jsonl"
if same_transcript "$work/rust-rust.driver.jsonl" "$work/short.jsonl" >/dev/null; then bad "transcript comparison accepts a short transcript"; else ok "transcript comparison notices a difference"; fi

echo "== summary"
echo "scenario wall time (connector): rust<->rust ${rr_ms} ms, rust responder + go driver ${gd_ms} ms, rust driver + go responder ${gr_ms} ms, go<->go ${gg_ms} ms"
echo "${pass} passed, ${#failed[@]} failed"
if [ "${#failed[@]}" -gt 0 ]; then
    printf '  failed: %s\n' "${failed[@]}"
    exit 1
fi
echo "check.sh: PASS"
