#!/usr/bin/env bash
# The release build of the native binary for one napi target, exactly as
# .github/workflows/release.yml builds what it publishes (the workflow runs this script).
#
#   npm run build:release                          # x86_64-unknown-linux-gnu
#   npm run build:release -- aarch64-unknown-linux-gnu
#
# Linux targets are linked by zig through cargo-zigbuild (`napi build -x`), gnu ones against
# glibc 2.17's symbol versions instead of the build machine's glibc (memfd_create, which glibc
# only has since 2.27, is bound by name: docs/PLATFORMS.md). macOS targets build with the
# host's Xcode toolchain. The Linux tools, zig and cargo-zigbuild, come from PyPI pinned by version
# and hash (scripts/release-tools.txt) into a virtualenv in a project-local cache
# ($SHMLINK_TOOLS_DIR, default .tools/, gitignored), installed only when missing or at
# another version. Delete .tools/ to start from scratch.
#
# Output:
#   npm/<triple>/shmlink.<triple>.node          the binary the platform package publishes
#   target/release-build/<triple>/              the same binary with the generated loader
#                                               binding.js (wrapped) and binding.d.ts
# Cargo builds in target/release-build/cargo: the development build (`npm run build`) uses
# the same target triple with other linker settings, and sharing a directory would make
# each build redo the other's work. The repository root's binary and loader (the
# development build's) are left alone. The Rust standard library for the target must be
# installed (rustup target add).
set -euo pipefail

ZIGLANG_VERSION=0.17.1        # must match scripts/release-tools.txt
CARGO_ZIGBUILD_VERSION=0.24.1 # must match scripts/release-tools.txt
GLIBC_VERSION=2.17            # the highest GLIBC_ symbol version the linux-*-gnu binaries may need

cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${1:-x86_64-unknown-linux-gnu}
TOOLS=${SHMLINK_TOOLS_DIR:-$ROOT/.tools}

say() { printf 'build-release: %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}

TRIPLE=$(node -p 'require("./scripts/native.js").tripleOfRustTarget(process.argv[1])' "$TARGET")
BINARY_NAME=$(node -p 'require("./package.json").napi.binaryName')
BINARY="$BINARY_NAME.$TRIPLE.node"
node -e 'const t = require("./package.json").napi.targets; if (!t.includes(process.argv[1])) { console.error(`${process.argv[1]} is not one of package.json napi.targets: ${t.join(", ")}`); process.exit(1) }' "$TARGET" ||
  die "unknown target $TARGET"
[ -d "npm/$TRIPLE" ] || die "npm/$TRIPLE does not exist (napi create-npm-dirs makes it)"

LIBDIR=$(rustc --print target-libdir --target "$TARGET" 2>/dev/null || true)
if [ -z "$LIBDIR" ] || ! compgen -G "$LIBDIR/libstd-*.rlib" >/dev/null; then
  die "the Rust standard library for $TARGET is not installed (rustup target add $TARGET)"
fi

case "$TARGET" in
  *-linux-gnu*) ZIG=1 BUILD_TARGET="$TARGET.$GLIBC_VERSION" ;;
  *-linux-*) ZIG=1 BUILD_TARGET=$TARGET ;;
  *) ZIG=0 BUILD_TARGET=$TARGET ;;
esac

VENV="$TOOLS/venv"

install_tools() {
  local zig zigbuild
  zig=$("$VENV/bin/python3" -m ziglang version 2>/dev/null || true)
  zigbuild=$("$VENV/bin/cargo-zigbuild" --version 2>/dev/null || true)
  if [ "$zig" != "$ZIGLANG_VERSION" ] || [ "$zigbuild" != "cargo-zigbuild $CARGO_ZIGBUILD_VERSION" ]; then
    say "installing zig $ZIGLANG_VERSION and cargo-zigbuild $CARGO_ZIGBUILD_VERSION from PyPI into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python3" -m pip install --quiet --disable-pip-version-check --no-deps \
      --only-binary :all: --require-hashes -r "$ROOT/scripts/release-tools.txt"
    zig=$("$VENV/bin/python3" -m ziglang version)
    zigbuild=$("$VENV/bin/cargo-zigbuild" --version)
    [ "$zig" = "$ZIGLANG_VERSION" ] || die "zig reports version $zig, expected $ZIGLANG_VERSION"
    [ "$zigbuild" = "cargo-zigbuild $CARGO_ZIGBUILD_VERSION" ] || die "$zigbuild, expected $CARGO_ZIGBUILD_VERSION"
  fi
  # cargo-zigbuild and napi look for `zig` on PATH; zig finds its lib/ from its real path.
  mkdir -p "$TOOLS/bin"
  ln -sf "$("$VENV/bin/python3" -c 'import ziglang, os; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')" "$TOOLS/bin/zig"
}

if [ "$ZIG" = 1 ]; then
  install_tools
  export PATH="$TOOLS/bin:$VENV/bin:$PATH"
  # Only this zig: cargo-zigbuild tries `python3 -m ziglang` before `zig`.
  export CARGO_ZIGBUILD_PYTHON_PATH="$VENV/bin/python3"
  export CARGO_ZIGBUILD_ZIG_PATH="$TOOLS/bin/zig"
  export CARGO_ZIGBUILD_CACHE_DIR="$TOOLS/cache"
  export ZIG_GLOBAL_CACHE_DIR="$TOOLS/cache/zig"
  export ZIG_LOCAL_CACHE_DIR="$TOOLS/cache/zig-local"
  # napi would `cargo install cargo-zigbuild` (unpinned) if it did not find ours.
  cargo help zigbuild >/dev/null 2>&1 || die "cargo zigbuild is not found on PATH after installing it"
  CROSS=--cross-compile
else
  CROSS=
fi

OUT="target/release-build/$TRIPLE"
mkdir -p "$OUT"
rm -f "$OUT/$BINARY"
say "napi build --release --target $BUILD_TARGET $CROSS"
# The same command as a development build (package.json "build"), plus the target, the
# cross linker and --locked: Cargo.lock is used as committed.
node node_modules/@napi-rs/cli/dist/cli.js build --platform --release --target "$BUILD_TARGET" ${CROSS:+"$CROSS"} \
  --target-dir target/release-build/cargo --output-dir "$OUT" --js binding.js --dts binding.d.ts -- --locked
node scripts/wrap-binding.js "$OUT/binding.js"
[ -f "$OUT/$BINARY" ] || die "napi build did not write $OUT/$BINARY"
cp "$OUT/$BINARY" "npm/$TRIPLE/$BINARY"

# What the binary needs from glibc: the highest symbol version must be the one built for.
if [ "${TARGET#*-linux-gnu}" != "$TARGET" ] && command -v objdump >/dev/null; then
  MAX_GLIBC=$(objdump -T "npm/$TRIPLE/$BINARY" | grep -o 'GLIBC_[0-9][0-9.]*' | sort -u -V | tail -n 1)
  [ -n "$MAX_GLIBC" ] || die "objdump -T shows no GLIBC symbol version in npm/$TRIPLE/$BINARY"
  [ "$MAX_GLIBC" = "GLIBC_$GLIBC_VERSION" ] ||
    [ "$(printf '%s\n' "$MAX_GLIBC" "GLIBC_$GLIBC_VERSION" | sort -V | tail -n 1)" = "GLIBC_$GLIBC_VERSION" ] ||
    die "npm/$TRIPLE/$BINARY needs $MAX_GLIBC, more than GLIBC_$GLIBC_VERSION"
  say "highest glibc symbol version: $MAX_GLIBC"
fi
say "npm/$TRIPLE/$BINARY sha256 $(node -e 'process.stdout.write(require("crypto").createHash("sha256").update(require("fs").readFileSync(process.argv[1])).digest("hex"))' "npm/$TRIPLE/$BINARY")"
