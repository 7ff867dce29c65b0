#!/usr/bin/env bash
# peers/c/install-test.sh - installs libshmlink into a temporary prefix as a user would
# (make install PREFIX=...) and builds a program against it with pkg-config: shared
# (run with the prefix's lib directory on LD_LIBRARY_PATH) and static. Also checks that
# the header compiles as C99 with -pedantic and as C++, and that the shared library
# exports nothing but shmlink_*.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
need() { command -v "$1" >/dev/null 2>&1 || { echo "install-test.sh: $1 not found; $2" >&2; exit 1; }; }
need pkg-config "install it (Debian: apt-get install -y pkg-config)"
need "${CC:-cc}" "a C compiler is needed"

prefix=$(mktemp -d /tmp/shmlink-prefix.XXXXXX)
work=$(mktemp -d /tmp/shmlink-install-test.XXXXXX)
trap 'rm -rf "$prefix" "$work"' EXIT

make -C "$here" --no-print-directory -s install PREFIX="$prefix"
for f in lib/libshmlink.a lib/libshmlink.so lib/libshmlink.so.0 include/shmlink.h lib/pkgconfig/shmlink.pc; do
    [ -e "$prefix/$f" ] || { echo "install-test.sh: $prefix/$f was not installed" >&2; exit 1; }
done

export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
pkg-config --exists --print-errors shmlink
echo "  pkg-config --cflags --libs shmlink: $(pkg-config --cflags --libs shmlink) (version $(pkg-config --modversion shmlink))"

# Shared: what `cc prog.c $(pkg-config --cflags --libs shmlink)` gives.
# shellcheck disable=SC2046
${CC:-cc} -std=c11 -Wall -Wextra -Werror "$here/examples/roundtrip.c" $(pkg-config --cflags --libs shmlink) -o "$work/roundtrip"
# ldd's output is read whole before grep looks at it: `ldd | grep -q` under pipefail fails
# whenever grep exits before ldd has written its last line (SIGPIPE).
linked=$(LD_LIBRARY_PATH=$prefix/lib ldd "$work/roundtrip")
grep -q "libshmlink.so.0 => $prefix/lib/libshmlink.so.0" <<<"$linked" ||
    { echo "install-test.sh: the program is not linked to the installed libshmlink.so.0" >&2; echo "$linked" >&2; exit 1; }
LD_LIBRARY_PATH=$prefix/lib "$work/roundtrip"

# Static: the archive, with what --static adds.
# shellcheck disable=SC2046
${CC:-cc} -std=c11 -Wall -Wextra -Werror "$here/examples/roundtrip.c" $(pkg-config --cflags shmlink) \
    -Wl,-Bstatic $(pkg-config --static --libs-only-l shmlink) -Wl,-Bdynamic \
    $(pkg-config --static --libs-only-L --libs-only-other shmlink) -o "$work/roundtrip-static"
if grep -q libshmlink <<<"$(ldd "$work/roundtrip-static")"; then
    echo "install-test.sh: the static build still needs libshmlink.so" >&2
    exit 1
fi
"$work/roundtrip-static"

# The header on its own, strictly, and from C++.
printf '#include <shmlink.h>\nint main(void) { return shmlink_code_string(SHMLINK_OK)[0] != 79; }\n' >"$work/h.c"
${CC:-cc} -std=c99 -pedantic -Wall -Wextra -Werror -fsyntax-only $(pkg-config --cflags shmlink) "$work/h.c"
if command -v "${CXX:-c++}" >/dev/null 2>&1; then
    ${CXX:-c++} -x c++ -Wall -Wextra -Werror -fsyntax-only $(pkg-config --cflags shmlink) "$work/h.c"
fi

# Only the public API is exported.
extra=$(nm -D --defined-only "$prefix/lib/libshmlink.so" | awk '{print $3}' | grep -v '^shmlink_' || true)
[ -z "$extra" ] || { echo "install-test.sh: libshmlink.so exports $extra" >&2; exit 1; }
extra=$(nm "$prefix/lib/libshmlink.a" | awk '$2 ~ /^[TDBR]$/ {print $3}' | grep -v '^shmlink_' || true)
[ -z "$extra" ] || { echo "install-test.sh: libshmlink.a defines global $extra" >&2; exit 1; }

make -C "$here" --no-print-directory -s uninstall PREFIX="$prefix"
[ -z "$(find "$prefix" -type f -o -type l)" ] || { echo "install-test.sh: uninstall left files" >&2; exit 1; }
echo "install-test.sh: PASS (installed, built with pkg-config shared and static, ran both)"
