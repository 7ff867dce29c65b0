#!/usr/bin/env bash
# peers/build.sh - builds every interop peer of peers/SCENARIO.md for the comparison
# matrix (__test__/interop.spec.ts). Run by `npm test` (pretest) and by CI.
#
#   Rust    cargo build --release -p shmlink-peer   -> $CARGO_TARGET_DIR/release/shmlink-peer
#   Go      gofmt -l, go vet, go test, go build (golang.org/x/sys comes from the Go module
#           proxy on a clean machine)                -> peers/go/build/shmlink-peer
#   C       make -C peers/c all check (libshmlink, unit tests, install into a temporary
#           prefix and build against it with pkg-config) -> peers/c/build/shmlink-peer
#   Python  wheel of peers/python, installed into a fresh venv with pytest; runs the
#           library's unit tests there  -> peers/python/build/venv/bin/python
#
# Each tool skips work that is up to date, so a second run takes a few seconds. Any
# build error stops the script with a non-zero exit and names the peer that failed.
# The harness that pairs the peers, and its settings, are described in peers/SCENARIO.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")

step=""
trap 'status=$?; [ $status -ne 0 ] && echo "peers/build.sh: FAILED: $step (exit $status)" >&2' EXIT

need() {
    command -v "$1" >/dev/null 2>&1 || { echo "peers/build.sh: $1 not found; it is needed to build the $2 peer" >&2; exit 1; }
}

started=$(date +%s)

step="Rust peer (cargo build --release -p shmlink-peer)"
need cargo Rust
echo "peers/build.sh: $step"
(cd "$root" && cargo build --release -p shmlink-peer)

step="Go library and peer (gofmt, go vet, go test, go build in peers/go)"
need go Go
echo "peers/build.sh: $step"
# The library, and the Go programs of the quick starts and of the error-code test.
unformatted=$(gofmt -l "$here/go" "$root/examples/languages/go" "$root/__test__/codes/go")
[ -z "$unformatted" ] || { echo "peers/build.sh: not gofmt-formatted (run gofmt -w): $unformatted" >&2; exit 1; }
# -buildvcs=false: the peer needs no VCS stamp, and stamping fails in checkouts that git
# does not consider safe (another owner, as in some CI containers). go test caches
# results whose sources, files and environment did not change.
(cd "$here/go" && go vet -buildvcs=false ./... && go test -buildvcs=false ./... &&
    go build -buildvcs=false -o build/shmlink-peer ./cmd/shmlink-peer)

step="C library and peer (make -C peers/c all check: unit tests, install + pkg-config test)"
need make C
need pkg-config "C library's install"
echo "peers/build.sh: $step"
make -C "$here/c" --no-print-directory all check

step="Python library (wheel of peers/python, installed into a fresh venv)"
python=${PYTHON:-python3}
need "$python" Python
echo "peers/build.sh: $step"
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else "Python 3.9 or later is needed, found " + sys.version.split()[0])'
pybuild="$here/python/build"
rm -rf "$pybuild/venv" "$pybuild/dist"
"$python" -m venv "$pybuild/venv"
venv_python="$pybuild/venv/bin/python"
pip=("$venv_python" -m pip --quiet --disable-pip-version-check)
"${pip[@]}" wheel --no-deps --wheel-dir "$pybuild/dist" "$here/python"
"${pip[@]}" install --no-deps --no-index "$pybuild/dist"/shmlink-*.whl
"${pip[@]}" install pytest numpy  # numpy: the tests of views that outlive close()
# The interop peer and the tests must load the installed package, not the source tree.
(cd / && "$venv_python" -c 'import shmlink, sys; sys.exit(0 if "/site-packages/" in shmlink.__file__ else "shmlink loads from " + shmlink.__file__)')

step="Python library unit tests (pytest, against the installed wheel)"
echo "peers/build.sh: $step"
(cd "$here/python" && "$venv_python" -m pytest -q)

step=""
echo "peers/build.sh: all peers built ($(($(date +%s) - started)) s)"
