#!/bin/bash
# Build driver "o" (block-o.c) as a shared object for the installed Debian QEMU,
# against the headers of that exact Debian source package:
#   apt-get source qemu=<installed version>   (enables deb-src if needed, on the
#   machine's own mirrors: lab/qspanlab/aptsources.py)
#   QEMU's configure (block-layer headers do not depend on the feature set)
#   ninja of the generated qapi/trace headers only (seconds, not a QEMU build)
# The library embeds the build-id of /usr/bin/qemu-system-x86_64 and refuses to
# load into any other binary.
# Usage: lab/driver-o/build.sh OUTDIR      (idempotent)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../build/driver-o}
mkdir -p "$out"
out=$(cd "$out" && pwd)
qemu=/usr/bin/qemu-system-x86_64
pkgver=$(dpkg-query -W -f='${Version}' qemu-system-x86)
srcver=${pkgver%+b[0-9]*}   # a binNMU (+bN) is built from the same source
build_id=$(readelf -n "$qemu" | awk '/Build ID/ {print $3}')
stamp="$pkgver $build_id $(sha256sum "$here/block-o.c" "$0" | sha256sum | cut -c1-16)"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ] && [ -f "$out/libqspan-o.so" ]; then
    echo "driver o: up to date ($out/libqspan-o.so)"
    exit 0
fi
src="$out/src"
tree="$src/qemu-${srcver#*:}"
tree=${tree%-*}   # qemu-7.2+dfsg
if [ ! -f "$tree/configure" ]; then
    # grep -c reads all its input: with pipefail, grep -q would fail the pipeline by SIGPIPE.
    if ! apt-cache showsrc qemu 2>/dev/null | grep -c "^Version: $srcver\$" >/dev/null; then
        # The same mirrors as the machine's own bookworm sources (see lab/qspanlab/aptsources.py).
        list=/etc/apt/sources.list.d/qspan-deb-src.sources
        entries=$(python3 -I "$here/../qspanlab/aptsources.py" deb-src --by lab/driver-o/build.sh)
        echo "driver o: enabling deb-src for bookworm in $list (sources of the installed QEMU, from this machine's mirrors)"
        printf '%s\n' "$entries" >"$list"
        apt-get update -q
    fi
    echo "driver o: fetching the qemu $srcver source package"
    rm -rf "$src"
    mkdir -p "$src"
    chmod 755 "$src"
    (cd "$src" && apt-get source -q --only-source "qemu=$srcver" >/dev/null)
fi
if [ ! -f "$tree/b/config-host.h" ]; then
    echo "driver o: configuring QEMU headers"
    rm -rf "$tree/b"
    mkdir -p "$tree/b"
    (cd "$tree/b" && ../configure --prefix=/usr --disable-system --disable-user --enable-tools --disable-docs \
        --without-default-features --with-git-submodules=ignore >configure.log 2>&1) ||
        { tail -20 "$tree/b/configure.log" >&2; exit 1; }
fi
echo "driver o: generating qapi and trace headers"
(cd "$tree/b" && ninja $(ninja -t targets all | grep -oE '^(qapi/[^:]+\.h|qemu-version\.h|config-poison\.h|trace/[^:]+\.h)') >/dev/null)
echo "driver o: compiling libqspan-o.so for build-id $build_id"
gcc -shared -fPIC -O2 -g -Wall -std=gnu11 -pthread \
    -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -DQSPAN_EXPECTED_BUILD_ID="\"$build_id\"" \
    -I"$tree/b" -I"$tree/b/qapi" -I"$tree/b/trace" -I"$tree" -I"$tree/include" \
    -isystem "$tree/linux-headers" \
    $(pkg-config --cflags glib-2.0) \
    -o "$out/libqspan-o.so" "$here/block-o.c"
echo "$stamp" >"$out/stamp"
echo "driver o: built $out/libqspan-o.so"
