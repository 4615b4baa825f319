#!/bin/bash
# Run CMD with DEBUG_FILE installed where separate debug info goes by build-id
# (/usr/lib/debug/.build-id/xx/yyyy.debug, as a -dbgsym or -debuginfo package puts it), in this
# mount namespace only: run it under `unshare --mount --propagation private`. /usr/lib gets an
# overlay whose writes land in a tmpfs mounted on SCRATCH (an empty directory), so the host's
# /usr/lib is left as it was, and bpftrace, started by CMD, finds the file where qspan does.
#   usage: with_debug_info.sh DEBUG_FILE SCRATCH CMD [ARGS...]
set -euo pipefail
debug=$1 scratch=$2
shift 2
bid=$(readelf -n "$debug" 2>/dev/null | awk '/Build ID:/ {print $3}')
[ -n "$bid" ] || { echo "with_debug_info.sh: $debug has no build-id note" >&2; exit 1; }
mount -t tmpfs qspan-test-debug "$scratch"
mkdir -p "$scratch/upper/debug/.build-id/${bid:0:2}" "$scratch/work"
cp "$debug" "$scratch/upper/debug/.build-id/${bid:0:2}/${bid:2}.debug"
mount -t overlay qspan-test-debug -o lowerdir=/usr/lib,upperdir="$scratch/upper",workdir="$scratch/work" /usr/lib
exec "$@"
