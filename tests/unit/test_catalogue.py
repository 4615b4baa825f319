import re
from pathlib import Path

import pytest

from helpers import REPO, offsets_for
from qspan import catalogue
from qspan.errors import CatalogueError


def test_catalogue_loads_and_every_event_is_mapped():
    cat = catalogue.load()
    assert "co.switch" in cat.events and "req.submit" in cat.events
    mapped = {p.event for p in cat.probes} | {p.event for prof in cat.profiles.values() for p in prof.probes}
    own = {e for e in cat.events if e.startswith("trace.")}  # emitted by qspan's program itself
    optional = {e for e in cat.events if e.startswith("drv.")}  # a driver profile maps those it needs
    assert own == {"trace.window"} and mapped <= set(cat.events) - own
    assert set(cat.events) - own - mapped <= optional
    # the lab's profile leaves out the two that follow from other events (tracers/profiles/lab-o.txt)
    assert optional - mapped == {"drv.ack", "drv.spawn_done"}
    assert {"stock", "lab-o"} <= set(cat.profiles)
    assert cat.profiles["lab-o"].roles == {"driver": "O", "hop": "replication", "spawn": "B"}


def test_every_event_is_documented():
    doc = (REPO / "docs" / "events.md").read_text()
    documented = set(re.findall(r"^### `([a-z0-9_.]+)`", doc, re.M))
    assert documented == set(catalogue.load().events), "docs/events.md and tracers/events.txt disagree"


def test_no_uretprobes_anywhere_in_the_catalogue():
    for p in catalogue.load().probes:
        assert p.source in ("uprobe", "site", "usdt", "tracepoint")
    text = (REPO / "tracers" / "probes.txt").read_text()
    assert not re.search(r"^\S+\s+(uretprobe|ur)\s", text, re.M)


def test_version_selection_picks_the_right_signature():
    cat = catalogue.load()
    # kick.read counts the ring at offsets read off 7.2 and 10.0: elsewhere the line without
    ring = {v: [p.args[1] for p in cat.select(v, ("uprobe",)) if p.event == "kick.read"] for v in [(7, 2), (10, 0), (9, 1)]}
    assert ring[(7, 2)] == ring[(10, 0)] and "arg0-0x3c" in ring[(7, 2)][0]
    assert ring[(9, 1)] == ["0"]


def test_struct_offsets_come_from_the_binary_s_own_accessors():
    """Node names are read at bs->node_name, whose offset each build's bdrv_get_node_name shows."""
    from qspan.catalogue import offsets

    cat = catalogue.load()
    assert offsets_for((7, 2)) == {"bs.node_name": 0x40B8, "bs.drv": 0x10, "drv.format_name": 0, "job.id": 0,
                                   "job.progress": 0x30, "stats.last_access_ns": 0x120}
    assert offsets_for((10, 0))["bs.node_name"] == 0x40D8
    assert offsets_for((10, 0))["stats.last_access_ns"] == 0x150  # 8.1's zone append: a sixth op type
    # a build whose accessor reads the driver's name at an offset (not +0) says so
    fmt = {"bdrv_get_format_name": (0, bytes.fromhex("488b47184885c07403488b4008c3"))}
    assert offsets.derive(cat.offsets, fmt) == {"bs.drv": 0x18, "drv.format_name": 8}
    # a job's id not first in Job: read where that build's job_is_internal compares
    assert offsets.derive(cat.offsets, {"job_is_internal": (0, bytes.fromhex("48837f1000"))}) == {"job.id": 0x10}
    # one whose accessor differs gives no offset: its node.name lines are left out, and say why
    odd = {"bdrv_get_node_name": (0, bytes.fromhex("4889f8c3"))}
    assert "bs.node_name" not in offsets.derive(cat.offsets, odd)
    lines = [p for p in cat.probes if p.event == "node.name"]
    assert lines and all("{bs.node_name}" in p.args[1] for p in lines)
    assert offsets.substitute(lines[0].args[1], offsets_for((7, 2))) == "str:(*(uint64*)arg0)+0x40b8"


def _write(tmp: Path, events: str, probes: str) -> Path:
    (tmp / "events.txt").write_text(events)
    (tmp / "probes.txt").write_text(probes)
    return tmp


@pytest.mark.parametrize(
    "events,probes,message",
    [
        ("co.switch a,b,c desc\n", "", r"events.txt:1: event co.switch must list 4"),
        ("co.switch a,b,c,d x\nco.switch a,b,c,d y\n", "", r"events.txt:2: event co.switch defined twice"),
        ("co.switch a,b,c,d x\n", "# c\nco.swtch uprobe * f proc - - - -\n", r"probes.txt:2: unknown event 'co.swtch'"),
        ("co.switch a,b,c,d x\n", "co.switch kprobe * f proc - - - -\n", r"probes.txt:1: unknown probe source"),
        ("co.switch a,b,c,d x\n", "co.switch uprobe 7.x f proc - - - -\n", r"probes.txt:1: bad QEMU version"),
        ("co.switch a,b,c,d x\n", "co.switch uprobe * f proc - -\n", r"probes.txt:1: expected EVENT"),
        ("co.switch a,b,c,d x\nco.wake a,b,c,d y\n", "co.switch uprobe * f proc - - - -\n", r"events.txt:2: event co.wake has no probe"),
        # the event line carries strings in ARG1 and ARG2 only (transport/text.py parses them there)
        ("node.name a,b,c,d x\n", "node.name uprobe * f proc arg0 str:arg1 - str:arg2\n", r"probes.txt:1: string arguments go in ARG1 and ARG2"),
        ("node.name a,b,c,d x\n", "node.name uprobe * f proc str:arg0 - - -\n", r"probes.txt:1: string arguments go in ARG1 and ARG2"),
        ("node.name a,b,c,d x\n", "node.name uprobe * f proc arg0 str:a - -\nnode.name uprobe * g proc arg0 b - -\n",
         r"probes.txt:2: node.name has string arguments here but not at probes.txt:1"),
    ],
)
def test_malformed_catalogue_names_file_and_line(tmp_path, events, probes, message):
    with pytest.raises(CatalogueError, match=message):
        catalogue.load(_write(tmp_path, events, probes))


@pytest.mark.parametrize("profile,message", [
    ("name p\nrole hopp x\n", r"p.txt:2: expected 'role ROLE NAME'"),
    ("name p\nlibrary l.so\nprobe co.switch usdt noprovider proc - - - -\n", r"p.txt:3: a profile probe's target is provider:name"),
    ("name q\n", r"p.txt:1: profile must be named after its file"),
    ("name p\nprobe co.switch usdt o:x proc - - - -\n", r"p.txt: a profile with probes needs a 'library'"),
    ("name p\nfrobnicate yes\n", r"p.txt:2: unknown profile line 'frobnicate'"),
])
def test_malformed_profile_names_file_and_line(tmp_path, profile, message):
    d = _write(tmp_path, "co.switch a,b,c,d x\n", "co.switch uprobe * f proc - - - -\n")
    (d / "profiles").mkdir()
    (d / "profiles" / "p.txt").write_text(profile)
    with pytest.raises(CatalogueError, match=message):
        catalogue.load(d)


def test_every_event_probed_is_read_by_the_correlator():
    # A probe whose event nothing reads costs QEMU a hit (and a map store) for nothing:
    # loop.wake (sys_exit_ppoll on every watched thread) was one.
    from qspan.correlate import Correlator

    cat = catalogue.load()
    handled = set(Correlator({}).handlers)
    probed = {p.event for p in cat.probes} | {p.event for prof in cat.profiles.values() for p in prof.probes}
    assert probed - handled == set()
    assert {name for name in cat.events if name.startswith("trace.")} <= handled


def test_a_function_is_probed_by_a_site_line_or_a_uprobe_line_not_both(tmp_path):
    import shutil

    shutil.copytree(REPO / "tracers", tmp_path / "t")
    probes = tmp_path / "t" / "probes.txt"
    probes.write_text(probes.read_text() + "req.ack  uprobe  *  qemu_coroutine_yield  proc  arg0  -  -  -\n")
    with pytest.raises(CatalogueError, match="qemu_coroutine_yield has a site line and a uprobe line"):
        catalogue.load(tmp_path / "t")
