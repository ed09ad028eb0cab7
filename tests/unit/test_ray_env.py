"""Local clusters run HAProxy under SCHED_BATCH: its wakeups, one per
streamed chunk, no longer preempt the replica writing the chunks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from local_stack.ray_env import haproxy_env, local_ray_env, stop_haproxy, wrapped_binary

def policy_reporter(folder: Path) -> Path:
    """A stand-in binary that prints its scheduling policy and its arguments."""
    script = folder / "report-policy"
    script.write_text(f"#!{sys.executable}\nimport os, sys\nprint(os.sched_getscheduler(0), *sys.argv[1:])\n")
    script.chmod(0o755)
    return script


def test_the_binary_runs_under_sched_batch_with_its_arguments(tmp_path):
    binary = policy_reporter(tmp_path)
    wrapper = haproxy_env({"RAY_SERVE_HAPROXY_BINARY_PATH": str(binary)}, tmp_path)["RAY_SERVE_HAPROXY_BINARY_PATH"]
    out = subprocess.run([wrapper, "-db", "-f", "a file with spaces.cfg"], capture_output=True, text=True, check=True)
    assert out.stdout.split(" ", 1) == [str(os.SCHED_BATCH), "-db -f a file with spaces.cfg\n"]


def test_wrapping_twice_wraps_the_binary_not_the_wrapper(tmp_path):
    binary = policy_reporter(tmp_path)
    (tmp_path / "first").mkdir(), (tmp_path / "second").mkdir()
    first = haproxy_env({"RAY_SERVE_HAPROXY_BINARY_PATH": str(binary)}, tmp_path / "first")
    second = haproxy_env(first, tmp_path / "second")
    assert wrapped_binary(second["RAY_SERVE_HAPROXY_BINARY_PATH"]) == str(binary)
    assert wrapped_binary(str(binary)) == str(binary)


def test_a_local_cluster_env_wraps_rays_bundled_haproxy():
    env = local_ray_env({})
    try:
        wrapper = env["RAY_SERVE_HAPROXY_BINARY_PATH"]
        assert Path(wrapper).parent == Path(env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])
        assert Path(wrapped_binary(wrapper)).name == "haproxy"
        version = subprocess.run([wrapper, "-v"], capture_output=True, text=True, check=True).stdout
        assert version.startswith("HAProxy version")
    finally:
        stop_haproxy(env)
    assert not Path(wrapper).exists()


def test_without_fast_ingress_there_is_no_haproxy_to_wrap():
    assert "RAY_SERVE_HAPROXY_BINARY_PATH" not in local_ray_env({}, fast_ingress=False)
