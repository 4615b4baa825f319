#!/bin/bash
# Build QEMU 7.2 with the dtrace trace backend, as Fedora and RHEL ship QEMU: every
# trace event is a USDT probe qemu:<event> (~3,650 of them), and the binary exports
# few functions (no --enable-modules) but keeps a full .symtab. Built from the
# Debian source package that driver O's build already fetched (lab/driver-o/build.sh
# SRC_TREE), out of tree, qemu-system-x86_64 only: ~3 minutes on 2 cores.
# Nothing is installed: the lab runs OUTDIR/qemu-system-x86_64 with the installed
# packages' firmware folders (-L).
# Usage: lab/qemu-dtrace/build.sh SRC_TREE OUTDIR      (idempotent)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tree=${1:?usage: build.sh SRC_TREE OUTDIR}
out=${2:?usage: build.sh SRC_TREE OUTDIR}
tree=$(cd "$tree" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
pkgver=$(dpkg-query -W -f='${Version}' qemu-system-x86)
stamp="$pkgver $(sha256sum "$0" | cut -c1-16)"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ] && [ -x "$out/qemu-system-x86_64" ]; then
    echo "qemu 7.2 dtrace: up to date ($out/qemu-system-x86_64)"
    exit 0
fi
[ -f "$tree/configure" ] || { echo "qemu 7.2 dtrace: no QEMU source in $tree (run lab/driver-o/build.sh first)" >&2; exit 1; }
b="$out/b"
rm -rf "$b"
mkdir -p "$b"
echo "qemu 7.2 dtrace: configuring (x86_64-softmmu, --enable-trace-backends=dtrace)"
(cd "$b" && "$tree/configure" --prefix=/usr --target-list=x86_64-softmmu --enable-trace-backends=dtrace \
    --disable-docs --disable-tools --disable-user --disable-werror --with-git-submodules=ignore \
    >configure.log 2>&1) || { tail -30 "$b/configure.log" >&2; exit 1; }
echo "qemu 7.2 dtrace: compiling qemu-system-x86_64 (~3 min on 2 cores)"
(cd "$b" && ninja qemu-system-x86_64 >ninja.log 2>&1) || { tail -30 "$b/ninja.log" >&2; exit 1; }
cp "$b/qemu-system-x86_64" "$out/qemu-system-x86_64.new"
mv "$out/qemu-system-x86_64.new" "$out/qemu-system-x86_64"
probes=$(readelf -n "$out/qemu-system-x86_64" | grep -c "Provider: qemu" || true)
if [ "$probes" -lt 1000 ]; then
    echo "qemu 7.2 dtrace: the binary has $probes qemu USDT probes, expected thousands" >&2
    exit 1
fi
rm -rf "$b"  # ~1 GB of objects; the binary is all the lab needs
echo "$stamp" >"$out/stamp"
echo "qemu 7.2 dtrace: built $out/qemu-system-x86_64 ($probes qemu:* USDT probes)"
