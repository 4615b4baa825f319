"""Opening a recording says how far it got (`qspan serve --open` of 100 MiB takes ~30 s here)."""

import gzip
import os

import pytest

from helpers import DATA
from qspan.errors import RecordingError
from qspan.live.replay import ReplaySession
from qspan.output import recording
from qspan.server.run import OpeningProgress

RECORDINGS = ["stock-qd4-w100.qspan.gz", "stock-ring-qd4-w100.qspan.gz"]  # version 1 (text) and 2 (rings)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("gzipped", [True, False], ids=["gzipped", "plain"])
@pytest.mark.parametrize("name", RECORDINGS)
def test_progress_covers_the_file_twice_and_changes_nothing(tmp_path, name, gzipped):
    path = DATA / name
    if not gzipped:
        path = tmp_path / name.removesuffix(".gz")
        path.write_bytes(gzip.decompress((DATA / name).read_bytes()))
    size = path.stat().st_size
    calls = []
    fds = _open_fds()
    with_progress = ReplaySession("s1", path, progress=lambda *call: calls.append(call))
    with_progress.start()
    assert _open_fds() == fds, "a recording read for progress was left open"
    plain = ReplaySession("s2", path)
    plain.start()

    assert [c[0] for c in calls] == sorted((c[0] for c in calls), key=["checking", "replaying"].index), calls
    checked = [c[1] for c in calls if c[0] == "checking"]
    assert checked == sorted(checked) and checked[-1] == size, (checked, size)
    assert {c[2] for c in calls if c[0] == "checking"} == {size}
    rec = recording.read(path)
    events = len(rec.events) + len(rec.lost)  # each a line replayed
    assert calls[-1] == ("replaying", events, events), calls[-1]
    replayed = [c[1] for c in calls if c[0] == "replaying"]
    assert replayed == sorted(replayed) and len(replayed) == 1 + events // 0x4000, (replayed, events)
    assert with_progress.feed.store.requests == plain.feed.store.requests > 0
    assert with_progress.feed.store.spans == plain.feed.store.spans


def test_the_server_says_it_at_most_every_five_seconds():
    said, now = [], [100.0]
    progress = OpeningProgress("big.qspan", said.append, clock=lambda: now[0])
    for t, done in [(101, 10), (104.9, 20), (105.1, 30), (106, 40), (110.2, 90)]:
        now[0] = t
        progress("checking", done << 20, 100 << 20)
    assert said == ["opening big.qspan: checking, 30 % ...", "opening big.qspan: checking, 90 % ..."]


def test_a_missing_recording_is_the_same_clear_error_with_progress(tmp_path):
    with pytest.raises(RecordingError, match="cannot open recording"):
        ReplaySession("s1", tmp_path / "missing.qspan", progress=lambda *call: None)
