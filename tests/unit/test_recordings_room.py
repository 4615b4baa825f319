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
    room = make_room(tmp_path, 14 * MiB, 4 * MiB, running={running: 5 * MiB})
    # 3 + 5 (the running one at its cap) + 3 of recordings + 4 for the new one > 14: the oldest
    # finished one goes (the running one stays)
    assert room.removed == [old.name] and room.max_bytes == 4 * MiB and room.note is None
    assert not old.exists() and running.exists() and newer.exists() and other.exists()


def test_when_removing_is_not_enough_the_new_cap_is_what_is_left(tmp_path):
    running = _rec(tmp_path, "20261201-110000-pid2-s2-9.qspan", 7, 200)
    room = make_room(tmp_path, 10 * MiB, 4 * MiB, running={running: None})
    assert room.removed == [] and room.max_bytes == 3 * MiB and "3 MiB left of --record-total-mb" in room.note


def test_no_total_cap_removes_nothing(tmp_path):
    old = _rec(tmp_path, "20261201-100000-pid1-s1-9.qspan", 3, 300)
    assert make_room(tmp_path, None, 4 * MiB, {}).removed == [] and old.exists()


def test_a_session_without_a_cap_of_its_own_gets_what_the_total_leaves(tmp_path):
    """--record-max-mb 0: nothing removed to make room for "everything", the total still holds."""
    old = _rec(tmp_path, "20261201-100000-pid1-s1-9.qspan", 3, 300)
    room = make_room(tmp_path, 10 * MiB, None, {})
    assert room.removed == [] and old.exists() and room.max_bytes == 7 * MiB


def test_a_recording_another_server_is_writing_is_left_alone(tmp_path):
    """Two servers may share the directory (compose mounts the host's /tmp): a recording still
    locked by its writer is not removed, however old."""
    import fcntl

    theirs = _rec(tmp_path, "20261201-090000-pid7-s1-8.qspan", 6, 600)
    mine = _rec(tmp_path, "20261201-100000-pid1-s1-9.qspan", 3, 300)
    with open(theirs, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # as open_writer holds it
        room = make_room(tmp_path, 10 * MiB, 4 * MiB, {})
    assert room.removed == [mine.name] and theirs.exists()


def test_the_free_space_check_says_why(tmp_path):
    assert room_check(tmp_path, 0)() is None
    why = room_check(tmp_path, 1 << 62)()
    assert why and "MiB free in" in why and "--record-keep-free-mb" in why
