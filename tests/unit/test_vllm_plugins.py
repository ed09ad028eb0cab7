"""The vLLM plugins this package registers (deployments/vllm_plugins.py):
the engine core waits for its worker without starving its own threads."""
import functools
import multiprocessing
import os
import threading
import time

import pytest

from deployments import vllm_plugins


@pytest.fixture(autouse=True)
def scheduling_restored():
    """Tests that run the plugin in this process switch its threads to
    SCHED_BATCH and tighten the main thread's timer slack: put both back,
    or every process started later by this test session (the Ray cluster,
    its replicas) inherits them."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    PR_SET_TIMERSLACK, PR_GET_TIMERSLACK = 29, 30
    slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0)
    policies = {int(tid): os.sched_getscheduler(int(tid)) for tid in os.listdir("/proc/self/task")}
    yield
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setscheduler(int(tid), policies.get(int(tid), os.SCHED_OTHER), os.sched_param(0))
        except OSError:  # the thread just ended
            pass
    prctl(PR_SET_TIMERSLACK, slack, 0, 0, 0)


def _installed_in(env: dict[str, str], result) -> None:
    import os

    os.environ.update(env)
    from vllm.distributed.device_communicators import shm_broadcast

    vllm_wait = shm_broadcast.SpinCondition.wait
    started, policies = threading.Event(), []
    earlier = threading.Thread(target=lambda: (started.wait(), policies.append(os.sched_getscheduler(0))))
    earlier.start()  # a thread the process had before the plugin ran
    vllm_plugins.yield_the_gil_while_waiting()
    started.set(), earlier.join()
    later = threading.Thread(target=lambda: policies.append(os.sched_getscheduler(0)))
    later.start(), later.join()  # one started after, like the engine core's input and output threads
    result.put((shm_broadcast.SpinCondition.wait is not vllm_wait, {os.sched_getscheduler(0), *policies}))


def plugin_effect(process_name: str, env: dict[str, str] | None = None) -> tuple[bool, set[int]]:
    """In a fresh process of that name: whether the plugin replaced
    SpinCondition.wait, and the scheduling policies of its threads after.
    Each case is run once per session (a spawned process imports vLLM)."""
    return _plugin_effect(process_name, tuple(sorted((env or {}).items())))


@functools.cache
def _plugin_effect(process_name: str, env: tuple[tuple[str, str], ...]) -> tuple[bool, set[int]]:
    env = dict(env)
    context = multiprocessing.get_context("spawn")
    result = context.Queue()
    process = context.Process(target=_installed_in, args=(env or {}, result), name=process_name)
    process.start()
    try:
        return result.get(timeout=120)
    finally:
        process.join(timeout=30)


def installed(process_name: str, env: dict[str, str] | None = None) -> bool:
    return plugin_effect(process_name, env)[0]


def test_the_entry_point_is_registered_for_vllm():
    from importlib.metadata import entry_points

    plugins = {entry.name: entry.value for entry in entry_points(group="vllm.general_plugins")}
    assert plugins["engine_core_yields_gil"] == "deployments.vllm_plugins:yield_the_gil_while_waiting"


def test_only_the_engine_core_process_changes_how_it_waits():
    assert installed("EngineCore")
    assert not installed("VllmWorker-0")  # the worker spins on its own core, as vLLM does


def test_vllms_own_waiting_is_kept_on_request():
    assert plugin_effect("EngineCore", {"SERVE_GRAPHS_VLLM_SPIN": "1"}) == (False, {os.SCHED_OTHER})


def test_the_engine_core_and_the_threads_it_starts_run_under_sched_batch():
    """Its polls wake it thousands of times a second; under SCHED_BATCH those
    wakeups do not preempt the HTTP front sharing its core."""
    assert plugin_effect("EngineCore") == (True, {os.SCHED_BATCH})
    assert plugin_effect("VllmWorker-0") == (False, {os.SCHED_OTHER})


class _Reader:
    """What the patched wait reads of vLLM's SpinCondition: a reader that
    read last at `last_read` and busy-loops for `busy_loop_s` after it."""

    is_reader = True

    def __init__(self, last_read: float, busy_loop_s: float = 1.0):
        self.last_read, self.busy_loop_s = last_read, busy_loop_s


@pytest.fixture
def patched_condition(monkeypatch):
    """SpinCondition.wait as the plugin installs it, with vLLM's own wait
    recorded instead of polling a socket."""
    from vllm.distributed.device_communicators import shm_broadcast

    idle_waits = []
    monkeypatch.setattr(shm_broadcast.SpinCondition, "wait", lambda self, timeout_ms=None: idle_waits.append(timeout_ms))
    monkeypatch.delattr(shm_broadcast.SpinCondition, "_serve_graphs_sleeps", raising=False)
    monkeypatch.setattr(multiprocessing.current_process(), "name", "EngineCore")
    vllm_plugins.yield_the_gil_while_waiting()
    return shm_broadcast.SpinCondition.wait, idle_waits


# A sleeping thread gets a core back within about one scheduling period once
# its sleep is over, even on a busy host (CFS's sched_latency: 12 ms on 2
# CPUs); 25 ms per wait leaves room. Twenty waits then stay near half a
# second, where one wait that spun through the reader's busy loop (1 s) would
# take more than the whole.
WAKEUP_TOLERANCE_S = 0.025


def test_a_busy_reader_sleeps_instead_of_spinning(patched_condition):
    wait, idle_waits = patched_condition
    waits, busy_loop_s = 20, 1.0
    started = time.perf_counter()
    for _ in range(waits):
        wait(_Reader(last_read=time.monotonic(), busy_loop_s=busy_loop_s))
    elapsed = time.perf_counter() - started
    assert idle_waits == []
    assert elapsed >= waits * vllm_plugins.POLL_S  # each wait gave the GIL and the core away
    # ... for POLL_S, not for a scheduler's whim nor for the reader's busy loop
    assert elapsed < waits * (vllm_plugins.POLL_S + WAKEUP_TOLERANCE_S) < busy_loop_s


def test_an_idle_reader_waits_on_vllms_socket_as_before(patched_condition):
    wait, idle_waits = patched_condition
    wait(_Reader(last_read=time.monotonic() - 5), timeout_ms=250)
    assert idle_waits == [250]


def test_gpu_engines_keep_vllms_waiting(monkeypatch):
    from vllm.distributed.device_communicators import shm_broadcast
    from vllm.platforms import current_platform

    vllm_wait = shm_broadcast.SpinCondition.wait
    monkeypatch.delattr(shm_broadcast.SpinCondition, "_serve_graphs_sleeps", raising=False)
    monkeypatch.setattr(multiprocessing.current_process(), "name", "EngineCore")
    monkeypatch.setattr(current_platform, "is_cpu", lambda: False)
    vllm_plugins.yield_the_gil_while_waiting()
    assert shm_broadcast.SpinCondition.wait is vllm_wait
