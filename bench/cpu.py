"""CPU time of a server's processes, by process, from /proc: what a server
spends per unit of work (per output token, per request), which a slower or
busier host does not change the way it changes throughput.

A server is the process that started it and all its descendants (vLLM's
API server and its engine core; `serve run` with Ray's GCS, raylet, workers,
replicas and HAProxy). Processes are labelled by what they run
(`ray::ServeReplica:chat:LLMServer:...` -> `ServeReplica:chat:LLMServer`).
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _label(pid: int) -> str:
    try:
        cmdline = (Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] or b"").decode(errors="replace")
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "gone"
    if cmdline.startswith("ray::"):  # a Ray worker's title: the actor, or the task it runs now
        title = cmdline[5:].split()[0].split(".")[0]
        return ":".join(title.split(":")[:3])
    if comm.startswith(("VLLM::", "EngineCore")) or "EngineCore" in cmdline:
        return "EngineCore"
    first = cmdline.split(" ")[0]  # a title set in place of argv holds spaces
    name = Path(first).name if first else comm
    if name.startswith("python"):
        return comm if comm and not comm.startswith(("python", "/")) else "python"  # comm: a truncated path when run as `python -m`
    return name


def tree_cpu(root: int) -> Counter[str]:
    """CPU seconds (user + system) so far of `root` and every live descendant, by label."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS)  # ppid; utime + stime
    members, grew = {root}, True
    while grew:
        grown = {pid for pid, (ppid, _) in stats.items() if ppid in members} - members
        members |= grown
        grew = bool(grown)
    seconds: Counter[str] = Counter()
    for pid in members & stats.keys():
        seconds[_label(pid)] += stats[pid][1]
    return seconds


def spent(before: Counter[str], after: Counter[str]) -> Counter[str]:
    """CPU seconds spent between two readings, by label (a process that ended is not counted)."""
    return Counter({label: after[label] - before.get(label, 0.0) for label in after if after[label] - before.get(label, 0.0) > 0})
