#!/bin/bash
# Build the lab guest from Debian packages: the cloud kernel, and an initramfs
# with busybox, the virtio-blk and virtio-scsi modules and the static qspan-load workload.
# The kernel package is downloaded and unpacked into OUTDIR/kernel, never
# installed: the host gets no new kernel, initramfs or bootloader entry.
# Usage: lab/guest/build.sh OUTDIR     (idempotent: rebuilds only when inputs change)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../build/guest}
mkdir -p "$out"
out=$(cd "$out" && pwd)
# linux-image-cloud-amd64 is a metapackage: the image is the versioned package it depends on.
image_pkg() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ {print $2; exit}'; }
pkg=$(image_pkg)
if [ -z "$pkg" ]; then
    apt-get update -q >/dev/null
    pkg=$(image_pkg)
fi
[ -n "$pkg" ] || { echo "lab guest: apt knows no linux-image-cloud-amd64 (check /etc/apt/sources.list*)" >&2; exit 1; }
kver=${pkg#linux-image-}
kroot="$out/kernel"
pkgver=$(apt-cache policy "$pkg" | awk '$1 == "Candidate:" {print $2}')
if [ ! -f "$kroot/unpacked" ] || [ "$(cat "$kroot/unpacked")" != "$pkg $pkgver" ]; then
    echo "lab guest: downloading and unpacking $pkg $pkgver (not installed) into $kroot"
    tmp=$(mktemp -d)
    chmod 755 "$tmp"  # apt's download user must be able to write here
    (cd "$tmp" && apt-get download -q "$pkg" >/dev/null) || { rm -rf "$tmp"; echo "lab guest: cannot download $pkg" >&2; exit 1; }
    rm -rf "$kroot"
    mkdir -p "$kroot"
    dpkg -x "$tmp"/*.deb "$kroot"
    rm -rf "$tmp"
    depmod -b "$kroot" "$kver"  # modules.dep inside $kroot only (the package's postinst would do it in /lib)
    echo "$pkg $pkgver" >"$kroot/unpacked"
fi
kernel="$kroot/boot/vmlinuz-$kver"
[ -f "$kernel" ] || { echo "lab guest: $pkg has no /boot/vmlinuz-$kver" >&2; exit 1; }
busybox=/bin/busybox  # from busybox-static: the initramfs has no libc
[ -x "$busybox" ] || { echo "lab guest: $busybox missing; install busybox-static" >&2; exit 1; }
stamp="$pkg $pkgver $(sha256sum "$here/init" "$here/qspan-load.c" "$0" | sha256sum | cut -c1-16)"
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
# Modules in dependency order, as modprobe would load them: virtio-blk's, and virtio-scsi's
# with the SCSI disk driver for the lab's virtio-scsi setup.
: >"$root/lib/modules/order"
for path in $(for m in virtio_pci virtio_blk virtio_scsi sd_mod; do modprobe -d "$kroot" --show-depends -S "$kver" $m; done | awk '$1 == "insmod" {print $2}'); do
    m=$(basename "$path"); m=${m%%.ko*}
    grep -qx "$m" "$root/lib/modules/order" && continue
    case "$path" in
    *.ko.xz) xz -dc "$path" >"$root/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -dcq "$path" >"$root/lib/modules/$m.ko" ;;
    *) cp "$path" "$root/lib/modules/$m.ko" ;;
    esac
    echo "$m" >>"$root/lib/modules/order"
done
for m in virtio_blk virtio_scsi sd_mod; do
    grep -qx $m "$root/lib/modules/order" || { echo "lab guest: $m module not found for $kver" >&2; exit 1; }
done
# Renamed into place: a lab booting while this runs reads the old files or the new ones, never half.
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initramfs.gz.new"
cp "$kernel" "$out/vmlinuz.new"
mv "$out/initramfs.gz.new" "$out/initramfs.gz"
mv "$out/vmlinuz.new" "$out/vmlinuz"
echo "$stamp" >"$out/stamp"
echo "lab guest: built $out/vmlinuz and $out/initramfs.gz"
