"""vLLM plugins this project ships (entry point group `vllm.general_plugins`,
loaded by every vLLM process, engine workers included).

They are entry points of this package, so they apply to every vLLM process
started from this environment: the platform's engines and a vLLM server
started by hand (the benchmark's baseline) run the same engine code.
"""


def init_cpu_amx() -> None:
    """Ask the kernel for AMX before vLLM's bf16 attention kernels run.

    On Intel CPUs with AMX, a first bf16 prompt of 4 tokens or fewer otherwise
    kills the engine with SIGILL: the kernel runs before the process requested
    the AMX tile state. Harmless elsewhere (AMD, no AMX): a no-op.
    """
    import torch

    init = getattr(torch.cpu, "_init_amx", None)
    if init is not None:
        init()


def yield_the_gil_while_waiting() -> None:
    """In vLLM's engine core process, wait for the worker's step result with
    short sleeps instead of `os.sched_yield()`.

    The engine core reads each step's result from its CPU worker through a
    shared-memory queue, busy-looping for a second after every read. Each
    `sched_yield` drops the GIL and retakes it at once, and every drop wakes
    a thread waiting for the GIL and restarts that thread's 5 ms timer, the
    one that would make the holder hand over: so the engine core's output
    thread (it sends the tokens to the API server) may not get the GIL before
    the engine goes idle, and a whole stream's tokens leave together after
    the last one: on a small CPU machine, through vLLM's own server as
    through Ray Serve, the first token often arrived as late as the last.

    Sleeping hands the GIL over: each wait sleeps POLL_S, long enough for
    the engine core's input and output threads to be scheduled and take the
    GIL even while the machine is busy (much shorter sleeps were not), and
    short against a CPU decode step. Only the engine core process
    changes (vLLM names it `EngineCore`); the worker keeps spinning on its
    own core. CPU engines only: GPU engines (steps of tens of milliseconds,
    cores to spare) keep vLLM's waiting, which was not measured to suffer.
    `SERVE_GRAPHS_VLLM_SPIN=1` keeps vLLM's own waiting on the CPU too.
    """
    import multiprocessing
    import os

    if os.environ.get("SERVE_GRAPHS_VLLM_SPIN") == "1":
        return
    if not multiprocessing.current_process().name.startswith("EngineCore"):
        return
    from vllm.distributed.device_communicators import shm_broadcast
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    condition = shm_broadcast.SpinCondition
    if getattr(condition, "_serve_graphs_sleeps", False):
        return
    condition.wait = _sleeping_wait(condition.wait)
    condition._serve_graphs_sleeps = True
    _tighten_timer_slack()
    _wake_without_preempting()


POLL_S = 200e-6  # a CPU decode step takes milliseconds


def _sleeping_wait(vllm_wait):
    import time

    def wait(self, timeout_ms=None):
        if self.is_reader and time.monotonic() <= self.last_read + self.busy_loop_s:
            time.sleep(POLL_S)
        else:
            vllm_wait(self, timeout_ms=timeout_ms)  # idle: vLLM's own wait on its socket

    return wait


def _wake_without_preempting() -> None:
    """Run the engine core under SCHED_BATCH: every thread it has (a policy
    is per thread on Linux), and so every thread they start.

    Its polls wake it 5,000 times a second, and a normal task's wakeup
    preempts the task running on its core: the HTTP front (vLLM's server or
    the Serve replica, and HAProxy) was switched out that often on the one
    core they share with the engine core. A SCHED_BATCH task's wakeups do not
    preempt; it still gets its fair share of the core. Under many concurrent
    streams on a small CPU machine this raises throughput and lowers the
    time to first token of vLLM's own server and the platform alike
    (docs/benchmarks.md, LLM benchmark)."""
    import os

    if not hasattr(os, "SCHED_BATCH") or not os.path.isdir("/proc/self/task"):
        return  # not Linux: wakeups preempt as before
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setscheduler(int(tid), os.SCHED_BATCH, os.sched_param(0))
        except OSError:  # the thread just ended
            pass


def _tighten_timer_slack() -> None:
    """Linux rounds a thread's sleeps up by its timer slack (50 µs by
    default); 1 µs keeps the engine core's polls close to POLL_S.
    Called on the engine core's main thread, the one that waits."""
    import ctypes

    PR_SET_TIMERSLACK = 29
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the default slack only costs latency
        pass
