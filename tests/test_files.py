"""Output folders: the run lock (pid and host), stale locks, and the writability check."""

import json
import os
import socket
import subprocess
import sys

import pytest

from fxharden._files import LOCK, check_writable, run_lock


def test_a_second_run_on_a_locked_folder_is_refused_and_the_lock_is_released(tmp_path):
    with run_lock(tmp_path, "reproduce") as path:
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(FileExistsError, match=rf"in use by another reproduce \(pid {os.getpid()} on host"):
            with run_lock(tmp_path, "reproduce"):
                pass
        assert path.exists()  # the refused run does not remove the holder's lock
    assert not (tmp_path / LOCK).exists()


def test_a_lock_left_by_a_killed_process_does_not_block_a_restart(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # that process has exited: its pid is free
    (tmp_path / LOCK).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "x"}))
    with run_lock(tmp_path) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_a_lock_from_another_host_is_respected(tmp_path):
    (tmp_path / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x"}))
    with pytest.raises(FileExistsError, match="host elsewhere"):
        with run_lock(tmp_path):
            pass


def test_an_unwritable_folder_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match=f"cannot write to {blocker / 'run'}"):
        check_writable(blocker / "run")
