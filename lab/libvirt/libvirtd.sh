#!/bin/bash
# Start a libvirtd for the lab that leaves the host as it found it: run under
# `unshare --mount --propagation private`, it sees its own /run, an overlay of /var whose
# writes land in a tmpfs, and the lab's configuration in place of /etc/libvirt. Its
# client socket is in STATE/sock, outside the namespace, for virsh -c 'qemu:///system?socket=...'.
# Nothing it writes outlives the namespace, which lives as long as libvirtd and its QEMUs.
#   usage: libvirtd.sh STATE CONFIG_DIR
set -euo pipefail
state=$1 config=$2
mount -t tmpfs -o mode=0755 qspan-lab-libvirt /run
mkdir -p /run/qspan-var/upper /run/qspan-var/work
mount -t overlay qspan-lab-var -o lowerdir=/var,upperdir=/run/qspan-var/upper,workdir=/run/qspan-var/work /var
mount --bind "$config" /etc/libvirt
# libvirt runs QEMU as libvirt-qemu, a user libvirt-daemon-system would add to the host:
# here it exists in this namespace only (uid 64055, the one Debian's package reserves).
for db in passwd group; do
    cp /etc/$db /run/qspan-$db
done
if ! getent passwd libvirt-qemu >/dev/null; then
    echo "libvirt-qemu:x:64055:64055:Libvirt Qemu (qspan lab):/var/lib/libvirt:/usr/sbin/nologin" >>/run/qspan-passwd
    mount --bind /run/qspan-passwd /etc/passwd
fi
if ! getent group libvirt-qemu >/dev/null; then
    echo "libvirt-qemu:x:64055:" >>/run/qspan-group
    mount --bind /run/qspan-group /etc/group
fi
exec /usr/sbin/libvirtd --daemon --pid-file "$state/libvirtd.pid"
