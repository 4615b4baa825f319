#!/bin/bash
# Unpack Debian's Prometheus server (the package `prometheus`) without installing it: the
# package would add a user, a service and a data directory to the host. The tests run the
# binary from OUTDIR/root on loopback, with a configuration and storage of their own
# (tests/e2e/test_prometheus.py).
# Usage: lab/prometheus/fetch.sh OUTDIR      (idempotent)
set -euo pipefail
out=${1:?usage: fetch.sh OUTDIR}
bin="$out/root/usr/bin/prometheus"
if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
    echo "prometheus: up to date ($out)"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"  # apt's download user must be able to write here
(cd "$tmp" && apt-get download -q prometheus) || { apt-get update -q && (cd "$tmp" && apt-get download -q prometheus); }
rm -rf "$out/root"
mkdir -p "$out/root"
dpkg -x "$tmp"/prometheus_*.deb "$out/root"
"$bin" --version 2>&1 | head -n1
