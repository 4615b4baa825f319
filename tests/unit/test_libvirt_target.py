"""How qspan tells a libvirt-started QEMU, and its domain, from QEMU's command line (pure)."""

from __future__ import annotations

from qspan.target.libvirt import domain_name, started_by_libvirt

# Debian's libvirt 9.0 starting the lab's domain (tests/e2e/test_libvirt.py), abridged
LIBVIRT_ARGV = ["/usr/bin/qemu-system-x86_64", "-name", "guest=qspan-lab,debug-threads=on", "-S",
                "-chardev", "socket,id=charmonitor,fd=27,server=on,wait=off",
                "-mon", "chardev=charmonitor,id=monitor,mode=control", "-accel", "tcg"]


def test_a_libvirt_qemu_is_known_by_its_fd_monitor_and_named_by_guest():
    assert started_by_libvirt(LIBVIRT_ARGV)
    assert domain_name(LIBVIRT_ARGV) == "qspan-lab"


def test_a_qemu_started_by_hand_is_not_taken_for_libvirt_s():
    lab = ["qemu-system-x86_64", "-name", "qspan-lab,debug-threads=on",
           "-qmp", "unix:/tmp/l/qmp.sock,server=on,wait=off"]
    assert domain_name(lab) is None and not started_by_libvirt(lab)
    # a -name guest= alone (someone copying libvirt's style) with a monitor path is not libvirt's
    by_hand = ["qemu-system-x86_64", "-name", "guest=vm1", "-chardev", "socket,id=mon,path=/tmp/m.sock,server=on"]
    assert domain_name(by_hand) == "vm1" and not started_by_libvirt(by_hand)
    assert domain_name([]) is None and domain_name(["-name"]) is None
