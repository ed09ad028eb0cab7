"""bench/cpu.py: a server's CPU is its process's and every descendant's."""
from __future__ import annotations

import subprocess
import sys

from bench.cpu import spent, tree_cpu

# A child that starts a grandchild; each burns 0.3 s of its own CPU time
# (process_time: the same amount of work on any machine), then says so.
BURN = "import time\nwhile time.process_time() < 0.3: pass\n"
PARENT = (
    "import subprocess, sys\n"
    f"child = subprocess.Popen([sys.executable, '-c', {BURN + 'print(1, flush=True); import time; time.sleep(30)'!r}], stdout=subprocess.PIPE)\n"
    + BURN
    + "child.stdout.readline()\nprint('burnt', flush=True)\nimport time; time.sleep(30)\n"
)


def test_the_cpu_of_a_process_tree_is_counted_by_process():
    server = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        before = tree_cpu(server.pid)
        assert server.stdout.readline().strip() == "burnt"
        used = spent(before, tree_cpu(server.pid))
    finally:
        server.kill()
        server.wait(timeout=10)
    assert sum(used.values()) >= 0.5  # both burns (0.6 s), less what ran before the first reading
    assert set(used) == {"python"}
    assert tree_cpu(999_999_999) == {}  # no such process: nothing
