#!/usr/bin/env bash
# peers/c/check.sh - the C library's part of `npm test`, on its own: a thin wrapper.
#
#   peers/c/check.sh [ava options, e.g. -m 'hostile_*']
#
# Builds every peer and runs each library's unit tests (peers/build.sh), then runs the one
# interop harness, __test__/interop.spec.ts, for C only (SHMLINK_PEERS=c). The
# harness's settings (SHMLINK_PEER_TIMEOUT, SHMLINK_PEER_TMPDIR, SHMLINK_VALGRIND, ...) are
# described in peers/SCENARIO.md. Needs the Node package built first (npm install).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bash "$root/peers/build.sh"
cd "$root" && SHMLINK_PEERS=c exec npx ava __test__/interop.spec.ts "$@"
