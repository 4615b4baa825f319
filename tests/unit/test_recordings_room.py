"""The server's disk limits for session recordings (qspan/server/recordings.py), on real files."""

import os
import time

from qspan.server.recordings import MiB, make_room, room_check


def _rec(d, name, mib, age_s):
    p = d / name
    p.write_bytes(b"\0" * (mib * MiB))
    t = time.time() - age_s
    os.utime(p, (t, t))
    return p


def test_the_oldest_finished_recordings_make_room_for_a_new_one(tmp_path):
    old = _rec(tmp_path, "20261201-100000-pid1-s1-9.qspan", 3, 300)
    running = _rec(tmp_path, "20261201-110000-pid2-s2-9.qspan", 3, 200)
    newer = _rec(tmp_path, "20261201-120000-pid3-s3-9.qspan", 3, 100)
    other = _rec(tmp_path, "notes.qspan", 3, 400)  # not named as qspan names them: never removed
    room = make_room(tmp_path, 10 * MiB, 4 * MiB, in_use={running})
    # 9 MiB of recordings + 4 for the new one > 10: the oldest finished one goes (the running one stays)
    assert room.removed == [old.name] and room.max_bytes == 4 * MiB and room.note is None
    assert not old.exists() and running.exists() and newer.exists() and other.exists()


def test_when_removing_is_not_enough_the_new_cap_is_what_is_left(tmp_path):
    running = _rec(tmp_path, "20261201-110000-pid2-s2-9.qspan", 7, 200)
    room = make_room(tmp_path, 10 * MiB, 4 * MiB, in_use={running})
    assert room.removed == [] and room.max_bytes == 3 * MiB and "3 MiB left of --record-total-mb" in room.note


def test_no_total_cap_removes_nothing(tmp_path):
    old = _rec(tmp_path, "20261201-100000-pid1-s1-9.qspan", 3, 300)
    assert make_room(tmp_path, None, 4 * MiB, set()).removed == [] and old.exists()


def test_the_free_space_check_says_why(tmp_path):
    assert room_check(tmp_path, 0)() is None
    why = room_check(tmp_path, 1 << 62)()
    assert why and "MiB free in" in why and "--record-keep-free-mb" in why
