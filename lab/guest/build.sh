#!/bin/bash
# Build the lab guest from Debian packages: the cloud kernel, and an initramfs
# with busybox, the virtio_blk modules and the static qspan-load workload.
# Usage: lab/guest/build.sh OUTDIR     (idempotent: rebuilds only when inputs change)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../build/guest}
mkdir -p "$out"
kernel=$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n1 || true)
if [ -z "$kernel" ]; then
    echo "lab guest: no /boot/vmlinuz-*-cloud-amd64; install linux-image-cloud-amd64" >&2
    exit 1
fi
kver=${kernel#/boot/vmlinuz-}
busybox=/bin/busybox  # from busybox-static: the initramfs has no libc
[ -x "$busybox" ] || { echo "lab guest: $busybox missing; install busybox-static" >&2; exit 1; }
stamp="$kver $(sha256sum "$here/init" "$here/qspan-load.c" "$0" | sha256sum | cut -c1-16)"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ] && [ -f "$out/initramfs.gz" ]; then
    echo "lab guest: up to date ($out)"
    exit 0
fi
echo "lab guest: building for kernel $kver in $out"
gcc -O2 -static -pthread -Wall -o "$out/qspan-load" "$here/qspan-load.c"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys,lib/modules}
cp "$busybox" "$root/bin/busybox"
cp "$out/qspan-load" "$root/bin/qspan-load"
cp "$here/init" "$root/init"
chmod 755 "$root/init"
# Modules in dependency order, as modprobe would load them.
: >"$root/lib/modules/order"
for path in $( (modprobe --show-depends -S "$kver" virtio_pci; modprobe --show-depends -S "$kver" virtio_blk) | awk '$1 == "insmod" {print $2}'); do
    m=$(basename "$path"); m=${m%%.ko*}
    grep -qx "$m" "$root/lib/modules/order" && continue
    case "$path" in
    *.ko.xz) xz -dc "$path" >"$root/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -dcq "$path" >"$root/lib/modules/$m.ko" ;;
    *) cp "$path" "$root/lib/modules/$m.ko" ;;
    esac
    echo "$m" >>"$root/lib/modules/order"
done
grep -qx virtio_blk "$root/lib/modules/order" || { echo "lab guest: virtio_blk module not found for $kver" >&2; exit 1; }
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initramfs.gz"
cp "$kernel" "$out/vmlinuz"
echo "$stamp" >"$out/stamp"
echo "lab guest: built $out/vmlinuz and $out/initramfs.gz"
