#!/bin/bash
# The quick-start demo: boot the lab, drive guest writes with 4 in flight,
# trace the running QEMU by PID for 10 s, and print where the time went.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${QSPAN_DEMO_OUT:-build/demo}
mkdir -p "$out"
qspan=.venv/bin/qspan
$qspan lab down >/dev/null 2>&1 || true
$qspan lab up
pid=$($qspan lab status | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
trap '$qspan lab down >/dev/null' EXIT
# A steady load in the background of the guest while we trace.
(sleep 3; $qspan lab load --op write --qd 4 --duration 6 --rate 400 --verify >"$out/guest.txt") &
$qspan attach --pid "$pid" --duration 10 --out "$out/spans.json" --record "$out/trace.qspan"
wait
echo
echo "guest measured:  $(grep 'QSPAN-LOAD done' "$out/guest.txt")"
echo
$qspan summary "$out/spans.json"
echo
echo "spans JSON: $out/spans.json   recording: $out/trace.qspan"
