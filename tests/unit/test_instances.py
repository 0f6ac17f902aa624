"""The instances file: locked while any process of a run lives; the next run reads what it left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from telepath.cli.instances import HEARTBEAT_S, InstanceFile, new_instance_id

pytestmark = pytest.mark.integration  # processes and file locks

# A run in another process: claims the file, records two ids, optionally starts a child that
# inherits the locked descriptor (as SIP workers do), says "ready" and waits to be killed.
_RUN = """
import os, subprocess, sys, time
from pathlib import Path
from telepath.cli.instances import InstanceFile
f = InstanceFile(Path(sys.argv[1]))
assert f.claim() is not None
f.add("gw_front")
f.add("gw_worker")
if sys.argv[2] == "child":
    fd = f.fileno()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=(fd,))
    print(child.pid, flush=True)
else:
    print(0, flush=True)
time.sleep(60)
"""


def _run(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN, str(tmp_path), mode], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    return proc, child


def _end(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def test_ids_are_unique() -> None:
    assert len({new_instance_id() for _ in range(1000)}) == 1000


def test_a_new_data_directory_has_nothing_to_recover(tmp_path: Path) -> None:
    instances = InstanceFile(tmp_path / "data")
    instances.add("gw_a")
    assert instances.claim() == []
    assert (tmp_path / "data" / "instances").read_text() == "gw_a\n"
    assert oct((tmp_path / "data" / "instances").stat().st_mode & 0o777) == "0o600"
    instances.close()


def test_a_data_directory_it_creates_is_the_owners_only(tmp_path: Path) -> None:
    # With PostgreSQL and TELEPATH_SECRET_KEY set, nothing else creates the data directory:
    # it must be 0700 as the README says and as the key file and SQLite paths make it.
    old = os.umask(0o022)
    try:
        instances = InstanceFile(tmp_path / "data")
        assert instances.claim() == []
    finally:
        os.umask(old)
    assert oct((tmp_path / "data").stat().st_mode & 0o777) == "0o700"
    instances.close()


def test_a_live_run_holds_the_file_and_a_killed_one_leaves_its_ids(tmp_path: Path) -> None:
    proc, _ = _run(tmp_path, "alone")
    try:
        second = InstanceFile(tmp_path)
        assert second.claim() is None  # the first run lives
        assert not second.claimed
        second.add("gw_second")  # not written while not claimed
        assert (tmp_path / "instances").read_text() == "gw_front\ngw_worker\n"
    finally:
        _end(proc)
    assert second.claim() == ["gw_front", "gw_worker"]
    assert (tmp_path / "instances").read_text() == "gw_second\n"
    second.discard("gw_second")
    assert (tmp_path / "instances").read_text() == ""
    second.close()


def test_the_lock_lasts_while_a_child_that_inherited_it_lives(tmp_path: Path) -> None:
    proc, child = _run(tmp_path, "child")
    try:
        _end(proc)
        later = InstanceFile(tmp_path)
        assert later.claim() is None  # the worker still drains: its calls are not lost yet
        os.kill(child, signal.SIGKILL)
        for _ in range(200):
            previous = later.claim()
            if previous is not None:
                break
            time.sleep(0.01)
        assert previous == ["gw_front", "gw_worker"]
        later.close()
    finally:
        _end(proc)
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_clean_stop_leaves_nothing_to_close(tmp_path: Path) -> None:
    first = InstanceFile(tmp_path)
    first.add("gw_front")
    assert first.claim() == []
    first.close()
    assert InstanceFile(tmp_path).claim() == []


def test_an_unusable_data_directory_turns_recovery_off_but_not_the_service(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    instances = InstanceFile(blocker / "data")  # its parent is a file: cannot be created
    instances.add("gw_a")
    assert instances.claim() == []
    assert not instances.claimed
    instances.add("gw_b")
    instances.discard("gw_a")
    instances.close()
    assert "retention sweep only" in caplog.text


def test_the_end_of_a_dead_runs_calls_is_its_last_heartbeat_not_the_restart(
    tmp_path: Path,
) -> None:
    """A run killed an hour ago: its calls ended then (within a heartbeat), not when the next
    run started — the duration is what a carrier bills."""
    path = tmp_path / "instances"
    path.write_text("gw_dead\n")
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))
    instances = InstanceFile(tmp_path)
    assert instances.claim() == ["gw_dead"]
    assert instances.last_alive is not None
    assert abs(instances.last_alive.timestamp() - an_hour_ago) < 1
    end = instances.lost_calls_end()
    assert end is not None
    assert abs(end.timestamp() - (an_hour_ago + HEARTBEAT_S)) < 1
    before = path.stat().st_mtime
    os.utime(path, (an_hour_ago, an_hour_ago))
    instances.beat()  # the running front marks itself alive
    assert path.stat().st_mtime >= before
    instances.close()


def test_a_clean_previous_run_leaves_no_end_to_estimate(tmp_path: Path) -> None:
    first = InstanceFile(tmp_path)
    first.add("gw_a")
    first.claim()
    first.close()
    second = InstanceFile(tmp_path)
    assert second.claim() == []
    assert second.last_alive is None and second.lost_calls_end() is None
    second.close()
