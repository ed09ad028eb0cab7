"""A throwaway Redis for the Feast cluster config (configs/feast/cluster):
Debian's `redis-server` (installed by `make venv`, local_stack/debian_packages.sh)
bound to 127.0.0.1 on a free port, nothing persisted (`--save "" --appendonly
no`, its working directory a private temp folder), protected mode on and
optionally a password; in its own process group, stopped through it.

    python -m local_stack.redis_server [--port N] [--password SECRET]
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from local_stack.processes import serve_until_stopped, stop_group
from local_stack.serve_configs import free_port


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise FileNotFoundError("no redis-server on PATH: run `make venv` (installs Debian's redis-server package)")
    return found


@dataclass
class RedisServer:
    """One redis-server process in its own process group."""

    name = "redis"
    port: int = field(default_factory=free_port)
    password: str | None = None
    log_file: Path | None = None
    process: subprocess.Popen | None = field(default=None, init=False)
    workdir: Path | None = field(default=None, init=False)

    @property
    def connection_string(self) -> str:
        """Feast's format: `host:port,password=...,ssl=false`. Feast splits it on
        commas and json-decodes each value, so the password must not hold a comma
        (and one that parses as JSON, like `123`, arrives as a number)."""
        parts = [f"127.0.0.1:{self.port}"]
        if self.password is not None:
            parts.append(f"password={self.password}")
        parts.append("ssl=false")
        return ",".join(parts)

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{self.port}"]

    def command(self) -> list[str]:
        command = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--protected-mode", "yes",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--daemonize", "no",
            "--logfile", "",  # stdout: the log file or nowhere
        ]
        return command

    def _write_password_file(self) -> Path:
        """The password in a config file only its owner can read, named on the
        command line instead of the password itself (a process list shows
        every argument to every local user)."""
        path = self.workdir / "auth.conf"
        quoted = '"' + self.password.replace("\\", "\\\\").replace('"', '\\"') + '"'
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(f"requirepass {quoted}\n")
        return path

    def start(self, timeout_s: float = 10.0) -> "RedisServer":
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"redis-server already running on port {self.port} (pid {self.process.pid})")
        self.workdir = Path(tempfile.mkdtemp(prefix="sg-redis-"))
        command = self.command()
        if self.password is not None:  # redis-server reads a config file named first, then the options
            command.insert(1, str(self._write_password_file()))
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        self.wait_ready(timeout_s)
        return self

    def ping(self, timeout_s: float = 1.0) -> bool:
        """PING answered PONG (with AUTH first when there is a password)."""
        if self.process is None or self.process.poll() is not None:
            return False
        request = b""
        if self.password is not None:
            secret = self.password.encode()
            request += b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret)
        request += b"*1\r\n$4\r\nPING\r\n"
        expected = (b"+OK\r\n" if self.password is not None else b"") + b"+PONG\r\n"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout_s) as sock:
                sock.sendall(request)
                answer = b""
                while len(answer) < len(expected) and not answer.startswith(b"-"):
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    answer += chunk
        except OSError:
            return False
        return answer == expected

    def is_ready(self) -> bool:
        return self.ping()

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._cleanup()
                raise RuntimeError(
                    f"redis-server exited with code {self.process.returncode} (port {self.port} taken?); log: {self.log_file}"
                )
            if self.ping():
                return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"redis-server did not answer PING on 127.0.0.1:{self.port} within {timeout_s:g} s; log: {self.log_file}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM its own process group (SIGKILL after the timeout); nothing is saved."""
        if self.process is not None:
            stop_group(self.process, timeout_s=timeout_s)
        self._cleanup()

    def remove_leftovers(self) -> list[str]:
        """After the process died: its private working folder."""
        left = [str(self.workdir)] if self.workdir is not None else []
        self._cleanup()
        return left

    def _cleanup(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    parser.add_argument("--password", default=None)
    args = parser.parse_args()
    server = RedisServer(port=args.port or free_port(), password=args.password)
    serve_until_stopped(server, "Redis ready: FEAST_REDIS_CONNECTION={server.connection_string}")


if __name__ == "__main__":
    main()
