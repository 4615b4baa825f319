"""--follow-all's scan: which QEMUs get a session, which are left alone, and when they are tried again."""

from __future__ import annotations

from qspan.errors import NotQemu, QspanError
from qspan.server.host import HostFollower


class Session:
    def __init__(self, pid):
        self.pid, self.state, self.id, self.error = pid, "attached", f"s{pid}-{id(self)}", None


class Manager:
    """What the follower reads of the session manager; attach fails for the PIDs in `refuse`."""

    def __init__(self, refuse=()):
        self.sessions, self.unfollowed, self.refuse, self.attempts = [], set(), set(refuse), []

    def list(self):
        return list(self.sessions)

    def attach(self, pid, profile):
        self.attempts.append(pid)
        if pid in self.refuse:
            raise NotQemu(f"PID {pid} is not QEMU")
        s = Session(pid)
        self.sessions.append(s)
        return s


class Host:
    def __init__(self):
        self.pids, self.t = {}, 0.0  # pid -> start time (its identity with the pid)

    def follower(self, manager, **kw):
        return HostFollower(manager, clock=lambda: self.t, list_pids=lambda: sorted(self.pids),
                            identity=lambda pid: (pid, "/usr/bin/qemu-system-x86_64", self.pids[pid]) if pid in self.pids else None,
                            **kw)


def test_every_qemu_gets_a_session_ones_started_later_too():
    host, m = Host(), Manager()
    host.pids = {100: 1, 200: 2}
    f = host.follower(m)
    f.step()
    assert sorted(s.pid for s in m.sessions) == [100, 200]
    f.step()
    assert m.attempts == [100, 200]  # traced ones are not attached again
    host.pids[300] = 3
    f.step()
    assert m.attempts == [100, 200, 300]


def test_a_process_a_user_detached_from_is_left_alone_until_it_is_a_new_process():
    host, m = Host(), Manager()
    host.pids = {100: 1}
    f = host.follower(m)
    f.step()
    m.sessions[0].state = "detached"
    m.unfollowed.add((100, "/usr/bin/qemu-system-x86_64", 1))
    f.step()
    assert m.attempts == [100]
    host.pids[100] = 7  # the same PID, a new process (QEMU started again)
    f.step()
    assert m.attempts == [100, 100]


def test_an_untraceable_qemu_is_tried_again_only_after_the_retry_time():
    host, m = Host(), Manager(refuse={100})
    host.pids = {100: 1}
    f = host.follower(m, retry_s=60)
    f.step()
    host.t = 30
    f.step()
    assert m.attempts == [100] and "not QEMU" in f.failed[(100, "/usr/bin/qemu-system-x86_64", 1)][1]
    host.t = 61
    f.step()
    assert m.attempts == [100, 100]
    del host.pids[100]
    f.step()
    assert f.failed == {}  # forgotten once the process is gone


def test_a_failed_scan_of_one_qemu_does_not_stop_the_others():
    class Flaky(Manager):
        def attach(self, pid, profile):
            if pid == 100:
                self.attempts.append(pid)
                raise QspanError("QMP timed out")
            return super().attach(pid, profile)

    host, m = Host(), Flaky()
    host.pids = {100: 1, 200: 2}
    host.follower(m).step()
    assert [s.pid for s in m.sessions] == [200]


def test_a_session_that_failed_after_it_started_is_tried_again_only_after_the_retry_time():
    host, m = Host(), Manager()
    host.pids = {100: 1}
    f = host.follower(m, retry_s=60)
    f.step()
    m.sessions[0].state, m.sessions[0].error = "failed", "bpftrace: cannot attach"  # its tracer failed later
    host.t = 2
    f.step()
    host.t = 30
    f.step()
    assert m.attempts == [100] and "cannot attach" in f.failed[(100, "/usr/bin/qemu-system-x86_64", 1)][1]
    host.t = 63
    f.step()
    assert m.attempts == [100, 100]
