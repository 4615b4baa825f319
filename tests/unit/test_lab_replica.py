"""Driver O's replica file: one name per lab directory in every process, so what a run
leaves on tmpfs is found and removed by the next `up` or `down`, whichever process runs it.

No QEMU here: `up` and `down` run in child processes with different PYTHONHASHSEED values
(the salt of str hashes), QEMU replaced by a script that does what the lab needs of it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from qspan.target import process_alive
from qspanlab import lab

# Stands in for QEMU -daemonize: the parent returns once the daemon has written the pidfile,
# the console's ready line and the replica file named on its -drive; the daemon then idles.
FAKE_QEMU = textwrap.dedent("""\
    import os, re, sys, time
    argv = sys.argv[1:]
    opt = lambda name: argv[argv.index(name) + 1]
    console = opt("-serial")[len("file:"):]
    if os.fork():
        while not os.path.exists(console):
            time.sleep(0.01)
        os._exit(0)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    m = re.search(r"replica=([^,]+)", opt("-drive") if "-drive" in argv else "")
    if m:
        open(m.group(1), "wb").close()
    open(opt("-pidfile"), "w").write(f"{os.getpid()}\\n")
    open(console + ".tmp", "w").write("QSPAN-GUEST ready\\n")
    os.rename(console + ".tmp", console)
    time.sleep(120)
""")

# Runs lab.up or lab.down in a fresh interpreter; the guest and driver O builds stubbed out.
DRIVER = textwrap.dedent("""\
    import json, sys
    from pathlib import Path
    from qspanlab import lab
    op, d, qemu = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    lab.build_guest = lambda *a: d / "guest"
    lab.build_driver_o = lambda: Path("/nonexistent/libqspan-o.so")
    lab.qemu_command = lambda build: ([], [sys.executable, qemu] if qemu != "false" else ["false"])
    try:
        result = lab.up(d, scenario="seed").replica if op == "up" else lab.down(d)
    except lab.LabError as err:
        result = f"LabError: {err}"
    print(json.dumps({"result": result, "replica_path": str(lab.replica_path(d))}))
""")


def _in_process(seed: int, *args: str) -> dict:
    env = dict(os.environ, PYTHONHASHSEED=str(seed))
    r = subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


class FakeLab:
    def __init__(self, d: Path):
        self.dir, self.qemu, self.pids, self.replicas = d, d.parent / "qemu.py", [], []
        self.qemu.write_text(FAKE_QEMU)

    def up(self, seed: int) -> Path:
        """`up` of the seed scenario in a process with this hash seed; the replica it made."""
        out = _in_process(seed, "up", str(self.dir), str(self.qemu))
        self.pids.append(int((self.dir / "qemu.pid").read_text()))
        replica = Path(out["result"])
        self.replicas.append(replica)
        assert replica.exists() and out["result"] == out["replica_path"], out
        return replica

    def crash(self) -> None:
        """QEMU dies without `down`: lab.json, the pidfile and the replica stay."""
        for pid in self.alive():
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not self.alive()

    def alive(self) -> list[int]:
        """The fake QEMUs still running (a reused PID runs something else)."""
        def ours(pid: int) -> bool:
            try:
                return process_alive(pid) and str(self.qemu).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                return False
        return [pid for pid in self.pids if ours(pid)]


@pytest.fixture
def fake_lab(tmp_path):
    d = tmp_path / "lab"
    d.mkdir()
    fl = FakeLab(d)
    yield fl
    fl.crash()
    for replica in {*fl.replicas, lab.replica_path(d)}:  # /dev/shm outlives tmp_path
        replica.unlink(missing_ok=True)


def test_replica_path_is_the_same_in_every_process(tmp_path):
    code = "import sys; from pathlib import Path; from qspanlab.lab import replica_path; " \
           "print(replica_path(Path(sys.argv[1])))"
    names = set()
    for seed in (0, 1, 2, 12345):
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONHASHSEED=str(seed)), timeout=60)
        assert r.returncode == 0, r.stderr
        names.add(r.stdout.strip())
    assert names == {str(lab.replica_path(tmp_path))}
    # and distinct labs do not share one
    assert lab.replica_path(tmp_path) != lab.replica_path(tmp_path / "other")


def test_down_in_another_process_stops_qemu_and_removes_the_replica(fake_lab):
    replica = fake_lab.up(seed=1)
    stopped = _in_process(2, "down", str(fake_lab.dir), "false")
    assert stopped["result"] is True and stopped["replica_path"] == str(replica)
    assert not fake_lab.alive()
    assert not replica.exists() and not (fake_lab.dir / "lab.json").exists()


def test_up_in_another_process_removes_what_a_crashed_run_left(fake_lab):
    replica = fake_lab.up(seed=1)
    fake_lab.crash()
    # the next up, in a process with another seed, clears the stale state before it starts
    # QEMU (which then fails to start: `false`)
    again = _in_process(2, "up", str(fake_lab.dir), "false")
    assert again["result"].startswith("LabError: QEMU failed to start"), again
    assert again["replica_path"] == str(replica)
    assert not replica.exists()


def test_up_finds_the_old_replica_by_its_name_alone(fake_lab):
    """lab.json gone too (the lab dir was wiped and made again): the name must still match."""
    replica = fake_lab.up(seed=1)
    fake_lab.crash()
    for p in fake_lab.dir.iterdir():
        p.unlink()
    _in_process(3, "up", str(fake_lab.dir), "false")
    assert not replica.exists()


def test_clear_stale_ignores_a_recorded_path_that_is_not_a_replica(tmp_path):
    victim = tmp_path / "precious.img"
    victim.write_text("keep")
    (tmp_path / "lab.json").write_text(json.dumps({"replica": str(victim)}))
    lab._clear_stale(tmp_path)
    assert victim.exists() and not (tmp_path / "lab.json").exists()
