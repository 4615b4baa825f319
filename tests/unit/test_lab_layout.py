"""The lab is its own package, qspanlab, with its own command, qspan-lab: nothing in it
names the old layout (qspan.lab, qspan.paths, qspan.clirun, `qspan lab ...`), every
`qspan-lab X` it tells the user to run exists, and scripts/setup.sh installs it."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

from helpers import REPO
from qspanlab import cli

LAB_FILES = sorted((REPO / "lab").glob("qspanlab/*.py")) + sorted((REPO / "lab").glob("*/*.sh"))
OLD_NAMES = re.compile(r"\bqspan\.(lab|paths|clirun)\b|['\"`]qspan lab\b|\bqspan lab (up|down|status|load|demo)\b")


def _subcommands() -> set[str]:
    sub = next(a for a in cli.build_parser()._actions if a.dest == "cmd")
    return set(sub.choices)


def test_no_file_of_the_lab_names_the_old_layout():
    hits = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in LAB_FILES
            for n, line in enumerate(p.read_text().splitlines(), 1) if OLD_NAMES.search(line)]
    assert not hits, "\n".join(hits)


def test_every_qspan_lab_command_it_mentions_exists():
    known = _subcommands()
    assert known == {"up", "down", "status", "load", "demo"}
    mentioned = {(p.name, m) for p in LAB_FILES for m in re.findall(r"qspan-lab (\w+)", p.read_text())}
    assert mentioned, "the lab's messages name qspan-lab commands"
    assert {(f, m) for f, m in mentioned if m not in known} == set()


def test_qspan_lab_is_installed_as_a_command():
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "qspan-lab"]
    assert ep.value == "qspanlab.cli:main"
    exe = Path(sys.executable).parent / "qspan-lab"
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "up" in r.stdout and "demo" in r.stdout, r.stderr


def test_setup_installs_the_lab_and_checks_its_command():
    text = (REPO / "scripts" / "setup.sh").read_text()
    assert re.search(r"pip install .*-e '\.\[test,compiled,otlp\]' -e lab\b", text)
    assert re.search(r"for cmd in qspan qspan-lab; do\n\s+if ! \.venv/bin/\$cmd --help", text)
    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / "setup.sh")]).returncode == 0


def test_setup_leaves_the_host_kernel_and_boot_alone():
    """The guest's kernel is downloaded and unpacked under build/, never installed on the host."""
    setup = (REPO / "scripts" / "setup.sh").read_text()
    packages = re.search(r"^packages=\((.*?)\)", setup, re.M | re.S).group(1).split()
    assert not [p for p in packages if p.startswith(("linux-image", "linux-headers", "grub", "systemd-boot"))], packages
    guest = (REPO / "lab" / "guest" / "build.sh").read_text()
    assert "apt-get install" not in guest and "dpkg -i" not in guest
    assert re.search(r'^kernel="\$kroot/boot/vmlinuz-\$kver"$', guest, re.M)  # the unpacked copy, not the host's /boot
    assert "/boot/vmlinuz-*" not in guest
    assert 'modprobe -d "$kroot"' in guest  # modules from the unpacked package, not the host's /lib/modules


def test_the_guest_holds_its_command_port_open_before_it_says_ready():
    """The host sends the first command as soon as it reads "QSPAN-GUEST ready". Bytes that
    reach ttyS1 before the guest holds it open are dropped (opening the port clears the UART,
    closing stty's own open flushes what it buffered): the guest then waited for ever for a
    command it never got, a boot in ten or so (CI runs and benchmarks that hung at their
    first load)."""
    lines = (REPO / "lab" / "guest" / "init").read_text().splitlines()
    code = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    opened = code.index("exec 3</dev/ttyS1")
    raw = next(i for i, ln in enumerate(code) if ln.startswith("stty -F /dev/ttyS1"))
    ready = next(i for i, ln in enumerate(code) if "QSPAN-GUEST ready" in ln)
    assert opened < raw < ready


def test_the_lab_machine_may_have_two_vcpus_so_tcg_keeps_the_guests_barriers():
    """QEMU 7.2's TCG emits a guest's memory barriers only when the machine may have more than
    one vCPU (CF_PARALLEL); virtio's notification handshake with the iothread needs them, and
    without them a full-rate guest lost an interrupt and stopped writing for good, with nothing
    attached (bench/guest_stall.py: 2 of 2 runs with maxcpus=1, 0 of 4 with 2)."""
    from qspanlab import lab
    argv = lab._qemu_argv(["qemu-system-x86_64"], Path("/tmp/d"), Path("/tmp/g"), "stock")
    smp = argv[argv.index("-smp") + 1]
    assert re.fullmatch(r"1,maxcpus=(\d+)", smp) and int(smp.split("=")[1]) >= 2
    assert lab.MAX_CPUS >= 2
