"""The apt entries the lab adds (deb-src for the QEMU source package, bookworm-backports for
QEMU 10.0) use the machine's own mirrors, read from its sources in either format.

Every test builds an /etc/apt in tmp_path; apt itself then reads the generated file
(`apt-get indextargets`, offline) to show it is a source apt understands.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from helpers import REPO
from qspanlab import aptsources
from qspanlab.aptsources import AptSourcesError, entries_for

MIRROR = "http://mirror.example/debian"
SECURITY = "http://mirror.example/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SCRIPT = REPO / "lab" / "qspanlab" / "aptsources.py"

# Debian 12's default, /etc/apt/sources.list.d/debian.sources, on a custom mirror.
DEBIAN_SOURCES = f"""\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: {MIRROR}
Suites: bookworm bookworm-updates
Components: main
Signed-By: {KEYRING}

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: {SECURITY}
Suites: bookworm-security
Components: main
Signed-By: {KEYRING}
"""

# The older one-line /etc/apt/sources.list, with the things real ones carry.
SOURCES_LIST = f"""\
# a local mirror
deb {MIRROR} bookworm main contrib non-free-firmware
deb {MIRROR} bookworm-updates main   # point-release updates
deb [ arch=amd64 signed-by={KEYRING} ] {SECURITY} bookworm-security main
deb-src http://elsewhere.example/debian sid main
deb https://packages.example.com/apt stable main
"""

# What the lab's earlier scripts wrote on every machine: never the machine's own sources.
OLD_QSPAN = """\
Types: deb deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates bookworm-backports
Components: main
"""


def etc_apt(root: Path, files: dict[str, str]) -> Path:
    etc = root / "etc-apt"
    (etc / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (etc / name).write_text(text)
    return etc


def stanzas(text: str) -> list[dict[str, str]]:
    """The fields of each stanza of a generated file (single-line values only)."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith("#")]
        out.append({k: v.strip() for k, _, v in (line.partition(":") for line in lines)})
    return out


def apt_reads(text: str, tmp_path: Path) -> list[tuple[str, str, str]]:
    """(type, repository URI, suite) of every index apt would fetch for this sources file, offline."""
    apt_get = shutil.which("apt-get")
    if not apt_get:
        pytest.fail("apt-get missing: these tests check the generated file with apt itself (Debian 12)")
    parts = tmp_path / "parts"
    parts.mkdir(exist_ok=True)
    (parts / "qspan-test.sources").write_text(text)
    (tmp_path / "lists").mkdir(exist_ok=True)
    r = subprocess.run([apt_get, "-o", "Dir::Etc::SourceList=/dev/null", "-o", f"Dir::Etc::SourceParts={parts}",
                        "-o", f"Dir::State::Lists={tmp_path / 'lists'}", "indextargets", "--no-release-info",
                        "--format", "$(TARGET_OF) $(REPO_URI) $(RELEASE)"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    return sorted(set(tuple(line.split()) for line in r.stdout.splitlines() if line.strip()))


def test_debian12_default_deb822_on_a_custom_mirror(tmp_path):
    etc = etc_apt(tmp_path, {"sources.list.d/debian.sources": DEBIAN_SOURCES})
    text = entries_for("deb-src", etc)
    assert "deb.debian.org" not in text
    assert stanzas(text) == [
        {"Types": "deb-src", "URIs": MIRROR, "Suites": "bookworm bookworm-updates", "Components": "main",
         "Signed-By": KEYRING},
        {"Types": "deb-src", "URIs": SECURITY, "Suites": "bookworm-security", "Components": "main",
         "Signed-By": KEYRING},
    ]
    assert apt_reads(text, tmp_path) == sorted([
        ("deb-src", f"{MIRROR}/", "bookworm"), ("deb-src", f"{MIRROR}/", "bookworm-updates"),
        ("deb-src", f"{SECURITY}/", "bookworm-security")])
    # the header says where the mirrors came from
    assert f"{etc}/sources.list.d/debian.sources:1" in text and "debian.sources:8" in text


def test_backports_come_from_the_release_mirror_not_the_security_one(tmp_path):
    etc = etc_apt(tmp_path, {"sources.list.d/debian.sources": DEBIAN_SOURCES})
    text = entries_for("backports", etc)
    assert stanzas(text) == [{"Types": "deb", "URIs": MIRROR, "Suites": "bookworm-backports",
                              "Components": "main", "Signed-By": KEYRING}]
    assert apt_reads(text, tmp_path) == [("deb", f"{MIRROR}/", "bookworm-backports")]


def test_one_line_sources_list(tmp_path):
    etc = etc_apt(tmp_path, {"sources.list": SOURCES_LIST})
    src = stanzas(entries_for("deb-src", etc))
    # one stanza per mirror and key: the two one-line entries of the main mirror merge
    assert src == [
        {"Types": "deb-src", "URIs": MIRROR, "Suites": "bookworm bookworm-updates", "Components": "main"},
        {"Types": "deb-src", "URIs": SECURITY, "Suites": "bookworm-security", "Components": "main",
         "Signed-By": KEYRING},
    ]
    assert stanzas(entries_for("backports", etc)) == [
        {"Types": "deb", "URIs": MIRROR, "Suites": "bookworm-backports", "Components": "main"}]


def test_the_lab_own_and_apt_ignored_files_are_not_read(tmp_path):
    etc = etc_apt(tmp_path, {
        "sources.list.d/debian.sources": DEBIAN_SOURCES,
        "sources.list.d/qspan-deb-src.sources": OLD_QSPAN,
        "sources.list.d/qspan-bookworm-backports.sources": OLD_QSPAN,
        "sources.list.d/cloud.list.disabled": "deb http://deb.debian.org/debian bookworm main\n",
    })
    for kind in ("deb-src", "backports"):
        text = entries_for(kind, etc)
        assert "deb.debian.org" not in text and MIRROR in text
    assert [p.name for p in aptsources.source_files(etc)] == ["debian.sources"]


def test_disabled_stanzas_and_third_party_repositories_are_left_out(tmp_path):
    etc = etc_apt(tmp_path, {"sources.list.d/debian.sources": textwrap.dedent("""\
        Types: deb
        URIs: http://old-mirror.example/debian
        Suites: bookworm
        Components: main
        Enabled: no

        Types: deb
        URIs: https://packages.example.com/apt
        Suites: stable
        Components: main
        """) + "\n" + DEBIAN_SOURCES})
    text = entries_for("backports", etc)
    assert "old-mirror" not in text and "packages.example.com" not in text and MIRROR in text


def test_inline_key_and_trusted_are_carried_over(tmp_path):
    key = ("\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mQINBGPL0BUBEADmW5NdOOHwPIJlgPu6JDcK\n"
           " -----END PGP PUBLIC KEY BLOCK-----")
    etc = etc_apt(tmp_path, {
        "sources.list.d/local.sources": f"Types: deb\nURIs: {MIRROR}\nSuites: bookworm\nComponents: main\n"
                                        f"Signed-By:{key}\n",
        "sources.list.d/security.list": f"deb [trusted=yes] {SECURITY} bookworm-security main\n",
    })
    text = entries_for("deb-src", etc)
    assert f"Signed-By:{key}\n" in text
    assert re.search(rf"URIs: {SECURITY}\nSuites: bookworm-security\nComponents: main\nTrusted: yes", text)
    assert apt_reads(text, tmp_path) == sorted([("deb-src", f"{MIRROR}/", "bookworm"),
                                                ("deb-src", f"{SECURITY}/", "bookworm-security")])


def test_no_bookworm_source_names_the_files_read(tmp_path):
    etc = etc_apt(tmp_path, {"sources.list.d/other.list": "deb https://packages.example.com/apt stable main\n",
                             "sources.list.d/qspan-deb-src.sources": OLD_QSPAN})
    with pytest.raises(AptSourcesError) as err:
        entries_for("deb-src", etc)
    msg = str(err.value)
    assert f"{etc}/sources.list.d/other.list" in msg and "qspan-* files" in msg
    with pytest.raises(AptSourcesError, match="files read: none"):
        entries_for("backports", etc_apt(tmp_path / "empty", {}))


def test_a_malformed_line_is_reported_at_file_and_line(tmp_path):
    etc = etc_apt(tmp_path, {"sources.list": f"deb {MIRROR} bookworm main\ndeb {MIRROR}\n"})
    with pytest.raises(AptSourcesError, match=r"sources\.list:2: malformed"):
        entries_for("deb-src", etc)


def test_the_scripts_run_it_with_the_system_python_and_no_fixed_mirror(tmp_path):
    """build.sh and fetch.sh call the module as a file, stdlib only (no venv needed); the
    exact command they run, pointed at a sample /etc/apt, gives that machine's mirror."""
    etc = etc_apt(tmp_path, {"sources.list.d/debian.sources": DEBIAN_SOURCES})
    python3 = shutil.which("python3", path="/usr/bin:/bin") or shutil.which("python3")
    for script, kind in (("lab/driver-o/build.sh", "deb-src"), ("lab/qemu10/fetch.sh", "backports")):
        text = (REPO / script).read_text()
        assert "deb.debian.org" not in text, script
        m = re.search(r'python3 -I "\$here/([^"]+)" (\S+) --by (\S+)\)', text)
        assert m and m.group(2) == kind, script
        module = (REPO / script).parent / m.group(1)
        assert module.resolve() == SCRIPT
        r = subprocess.run([python3, "-I", str(module), kind, "--by", m.group(3), "--etc", str(etc)],
                           capture_output=True, text=True, timeout=60, cwd="/")
        assert r.returncode == 0, r.stderr
        assert r.stdout == entries_for(kind, etc, by=m.group(3))
    r = subprocess.run([python3, "-I", str(SCRIPT), "deb-src", "--etc", str(tmp_path / "nowhere")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("aptsources: error: no 'deb' source for bookworm")
