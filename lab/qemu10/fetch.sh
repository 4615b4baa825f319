#!/bin/bash
# Unpack QEMU 10.0 from bookworm-backports next to the installed 7.2, without
# installing it: the lab runs it from OUTDIR/root in a private mount namespace
# (its own data folder with -L, and 7.2's modules hidden: QEMU aborts when it
# finds modules "from another build").
# bookworm-backports is enabled, if needed, on the machine's own mirrors
# (lab/qspanlab/aptsources.py).
# Usage: lab/qemu10/fetch.sh OUTDIR      (idempotent)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: fetch.sh OUTDIR}
bin="$out/root/usr/bin/qemu-system-x86_64"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q 'version 10\.0\.'; then
    echo "qemu 10.0: up to date ($out)"
    exit 0
fi
list=/etc/apt/sources.list.d/qspan-bookworm-backports.sources
# grep -c reads all its input: with pipefail, grep -q would fail the pipeline by SIGPIPE.
if ! apt-cache policy 2>/dev/null | grep -c bookworm-backports >/dev/null; then
    # The same mirrors as the machine's own bookworm sources (see lab/qspanlab/aptsources.py).
    entries=$(python3 -I "$here/../qspanlab/aptsources.py" backports --by lab/qemu10/fetch.sh)
    echo "qemu 10.0: enabling bookworm-backports in $list (this machine's mirrors; download only, nothing is installed from it)"
    printf '%s\n' "$entries" >"$list"
    apt-get update -q
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"  # apt's download user must be able to write here
(cd "$tmp" && apt-get download -q qemu-system-x86/bookworm-backports qemu-system-data/bookworm-backports)
rm -rf "$out/root"
mkdir -p "$out/root" "$out/empty"
for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$out/root"; done
"$bin" --version | head -n1
