"""The local stack's supervisor keeps a server up: a crash is restarted with
backoff, logged and counted; a stop asked for is not a crash; `/readyz` can
tell why a supervised backend is down. Real processes (a small TCP server),
no Triton needed: tests/integration/test_failures.py kills the real one."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

import pytest

from deployments.local_supervision import STATE_DIR_ENV, supervisor_note
from local_stack.processes import stop_group
from local_stack.serve_configs import free_port
from local_stack.supervisor import Backoff, Supervisor, describe_exit

pytestmark = pytest.mark.timeout(60)

# A minimal HTTP server: answers GET with 200, so a frozen one does not answer.
SERVE = ("from http.server import BaseHTTPRequestHandler, HTTPServer\n"
         "class Ok(BaseHTTPRequestHandler):\n"
         "    def do_GET(self): self.send_response(200); self.end_headers()\n"
         "    def log_message(self, *args): pass\n"
         "HTTPServer(('127.0.0.1', {port}), Ok).serve_forever()\n")


@dataclass
class TcpServer:
    """An HTTP server process on a loopback port: what the supervisor watches."""

    name = "tcp"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    starts: int = 0

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{self.port}"]

    def start(self, timeout_s: float = 10) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", SERVE.format(port=self.port)], start_new_session=True)
        self.starts += 1
        deadline = time.monotonic() + timeout_s
        while not self.is_ready():
            assert self.process.poll() is None and time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.02)

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=0.5) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, timeout_s=5)

    def remove_leftovers(self) -> list[str]:
        return ["nothing"]


def wait_for(condition, timeout_s: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.05)


@pytest.fixture
def supervised(tmp_path, monkeypatch):
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path))
    lines: list[str] = []
    supervisor = Supervisor(TcpServer(), backoff=Backoff(initial_s=0.3, max_s=2.0), state_dir=tmp_path,
                            log=lines.append, poll_s=0.05)
    supervisor.start()
    supervisor.lines = lines
    yield supervisor
    supervisor.close()


def state(supervisor) -> dict:
    return json.loads(supervisor.state_file.read_text())


def test_a_crashed_server_is_restarted_logged_and_counted(supervised):
    first = supervised.process.pid
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: supervised.restarts == 1 and supervised.is_ready(), what="restart after SIGKILL")
    assert supervised.process.pid != first
    assert supervised.last_exit.startswith("signal 9 (SIGKILL)")
    assert any("tcp exited unexpectedly (signal 9 (SIGKILL)" in line and "restart 1 in 0.3 s" in line for line in supervised.lines)
    assert any("tcp is back (restart 1)" in line for line in supervised.lines)
    assert any("removed what the dead tcp left behind: nothing" in line for line in supervised.lines)
    assert state(supervised)["state"] == "ready" and state(supervised)["restarts"] == 1


def test_a_stop_asked_for_is_not_restarted_and_start_brings_it_back(supervised):
    supervised.stop()
    time.sleep(1.0)  # several watcher polls and more than the first backoff
    assert supervised.process.poll() is not None and supervised.restarts == 0
    assert state(supervised)["state"] == "stopped"
    supervised.start()
    assert supervised.is_ready() and supervised.server.starts == 2 and supervised.restarts == 0


def test_while_it_restarts_readiness_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path))
    supervisor = Supervisor(TcpServer(), backoff=Backoff(initial_s=3.0), state_dir=tmp_path, log=lambda _: None, poll_s=0.05)
    supervisor.start()
    try:
        address = supervisor.addresses[0]
        assert supervisor_note(address) is None  # ready: nothing to say
        os.kill(supervisor.process.pid, signal.SIGSEGV)
        wait_for(lambda: state(supervisor)["state"] == "restarting", what="the restarting state")
        note = supervisor_note(f"http://{address}")
        assert note is not None and "tcp restarting after signal 11 (SIGSEGV)" in note and "restarts so far: 0" in note
        assert supervisor_note("127.0.0.1:1") is None  # another server's address
        wait_for(lambda: supervisor.restarts == 1 and supervisor.is_ready(), what="the restart after the backoff")
        assert supervisor_note(address) is None
    finally:
        supervisor.close()


def test_backoff_doubles_up_to_its_cap():
    backoff = Backoff(initial_s=0.5, factor=2.0, max_s=4.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def last_exit_line(supervisor) -> str:
    return [line for line in supervisor.lines if "exited unexpectedly" in line][-1]


def test_crashes_in_a_row_back_off_and_a_long_uptime_resets_the_count(supervised):
    for expected_delay in ("0.3", "0.6"):
        restarts = supervised.restarts
        os.kill(supervised.process.pid, signal.SIGKILL)
        wait_for(lambda: supervised.restarts == restarts + 1 and supervised.is_ready(), what="restart")
        assert f"in {expected_delay} s" in last_exit_line(supervised)
    supervised._up_since -= supervised.backoff.reset_after_s  # as if it had stayed up that long
    os.kill(supervised.process.pid, signal.SIGKILL)
    wait_for(lambda: supervised.restarts == 3 and supervised.is_ready(), what="restart")
    assert "in 0.3 s" in last_exit_line(supervised)


def test_ensure_ready_restores_a_server_left_stopped_or_frozen(supervised):
    supervised.stop()
    assert "left stopped" in supervised.ensure_ready()
    assert supervised.is_ready()
    frozen = supervised.process.pid
    os.kill(frozen, signal.SIGSTOP)  # a test that froze it and failed before resuming it
    assert "back after waiting" in supervised.ensure_ready(grace_s=5)
    assert supervised.process.pid == frozen and supervised.is_ready()
    with open(f"/proc/{supervised.process.pid}/stat") as stat:
        assert stat.read().split(") ")[1][0] != "T", "still stopped"


def test_exit_descriptions():
    assert describe_exit(-11) == "signal 11 (SIGSEGV)"
    assert describe_exit(3) == "exit code 3"
