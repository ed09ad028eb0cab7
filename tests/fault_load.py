"""Inject a fault while a bounded load runs, then assert and report.

An integration test opens a `LoadRun` against an HTTP endpoint, marks when
it injects the fault and when it heals it, stops the run and gets a
`FaultSummary`: what failed and how (the apps answer errors as JSON
`{"error": {"code", "message"}}`, 503s with `Retry-After`), how long clients
saw errors, whether anything hung, and latency before, during and after.
`assert_fault_contract` turns the summary into one readable AssertionError;
`format_table` / `print_report` print it for `pytest -s`.

The load is bench/loadgen.py's closed loop (each client sends its next
request when the last one answered; the benchmarks measure with it too),
here in a thread of its own and always bounded, in requests and in seconds:
a fault test must not run forever when the fault never heals.
"""
from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from bench.loadgen import HARD_DEADLINE_EXTRA_S, ClosedLoop
from bench.outcomes import Outcome

# A request is "hung" past the client timeout plus this: the event loop's
# own scheduling delay under load, never a server's answer.
HUNG_SLACK_S = 0.5
# The run recovered when this many last requests (by start time) all succeeded.
RECOVERY_N = 5
# Marks that end the fault phase; without one, the last mark after the fault does.
RECOVERY_LABELS = ("recovered", "fault_end")
UNCLEAR_EXAMPLES = 5


@dataclass(frozen=True)
class UnclearFailure:
    """A failed answer whose body was not the JSON error shape: a client
    cannot tell what went wrong, so a fault test treats it as a bug."""

    status: int
    kind: str
    started: float
    snippet: str


@dataclass
class FaultSummary:
    sent: int
    succeeded: int
    failed_by_kind: dict[str, int]
    unclear_count: int
    unclear_failures: list[UnclearFailure]  # all of them, by start time (reports show the first UNCLEAR_EXAMPLES)
    hung: int
    longest_error_window_s: float
    error_windows: int
    p99_before_ms: float | None
    p99_during_ms: float | None
    p99_after_ms: float | None
    recovered: bool
    first_success_after_fault_s: float | None
    with_retry_after: int  # failed answers that carried Retry-After
    request_timeout_s: float
    marks: list[tuple[str, float]] = field(default_factory=list)
    # The most common failures, ((status or kind), body snippet, count), and
    # the kinds of the last `recovery_n` requests: what an assertion message
    # shows, so a failure in CI says which error it was.
    common_failures: list[tuple[int | str, str, int]] = field(default_factory=list)
    last_kinds: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(self.failed_by_kind.values())


def error_windows(outcomes: Sequence[Outcome]) -> list[tuple[float, float]]:
    """Spans of time clients saw nothing but errors, as (start, end).

    Take the requests in order of start time. A window is a maximal run of
    consecutive failures in that order: it opens at the start of its first
    failure and closes at the latest end of any failure in it. Only a
    success that STARTED after a failure of the run started breaks the run;
    a slow success that started before the first failure and answered
    during the fault does not (it says nothing about the service after the
    fault began). A failure that started before the breaking success but
    answered after it still belongs to the run, so the window reaches its end.
    """
    windows: list[tuple[float, float]] = []
    current: list[float] | None = None
    for outcome in sorted(outcomes, key=lambda o: (o.started, o.ended)):
        if outcome.ok:
            if current is not None:
                windows.append((current[0], current[1]))
                current = None
        elif current is None:
            current = [outcome.started, outcome.ended]
        else:
            current[1] = max(current[1], outcome.ended)
    if current is not None:
        windows.append((current[0], current[1]))
    return windows


def fault_phases(marks: Sequence[tuple[str, float]]) -> tuple[float | None, float | None]:
    """(fault start, fault end) from the marks.

    The fault starts at the mark labelled "fault" (the first mark when none
    is). It ends at the first mark after it labelled one of RECOVERY_LABELS,
    else at the last mark after it, else never (None: "during" lasts to the
    end of the run). No marks: no fault, every request is "before".
    """
    if not marks:
        return None, None
    ordered = sorted(marks, key=lambda m: m[1])
    start = next((t for label, t in ordered if label == "fault"), ordered[0][1])
    later = [(label, t) for label, t in ordered if t > start]
    end = next((t for label, t in later if label in RECOVERY_LABELS), later[-1][1] if later else None)
    return start, end


def p99(latencies_ms: Sequence[float]) -> float | None:
    """numpy's (linear) 99th percentile, as the benchmarks' (bench/figures.py); None for no data."""
    return float(np.percentile(latencies_ms, 99)) if latencies_ms else None


def common_failures(outcomes: Sequence[Outcome], n: int = 3) -> list[tuple[int | str, str, int]]:
    """The n most common failures: (status, or kind without one; body snippet; count)."""
    bodies = Counter((o.status or o.kind, o.body_snippet[:160]) for o in outcomes if not o.ok)
    return [(status, snippet, count) for (status, snippet), count in bodies.most_common(n)]


def format_failures(failures: Sequence[tuple[int | str, str, int]]) -> list[str]:
    return [f"  {count} x {status} {snippet!r}" for status, snippet, count in failures]


def last_requests(outcomes: Sequence[Outcome], n: int = RECOVERY_N) -> list[Outcome]:
    """The last n requests by start time."""
    return sorted(outcomes, key=lambda o: (o.started, o.ended))[-n:]


def summarize(
    outcomes: Sequence[Outcome],
    marks: Sequence[tuple[str, float]],
    request_timeout_s: float,
    *,
    hung_slack_s: float = HUNG_SLACK_S,
    recovery_n: int = RECOVERY_N,
) -> FaultSummary:
    """Everything a fault test asserts, from the outcomes and marks alone.

    - hung: requests that timed out on the client side, or answered (either
      way) later than `request_timeout_s + hung_slack_s`.
    - unclear failures: non-200 answers whose body is not the JSON error
      shape; transport failures (status 0) are not, they have no body.
    - longest_error_window_s: see `error_windows`; 0.0 when nothing failed.
    - p99 phases, of successes only, by start time: before = started before
      the fault mark; during = from the fault mark up to the fault's end;
      after = from the fault's end on (see `fault_phases`). None when a phase
      had no success.
    - recovered: the last `recovery_n` requests by start time all succeeded
      (False with fewer requests than that: no evidence).
    - first_success_after_fault_s: from the fault mark to the end of the
      earliest-answered success that started after the first failure that
      started at or after the fault mark (when nothing failed after the
      mark: after the mark itself). It is how long after the fault began
      clients were answered again once they had seen it. None without a
      fault mark or without such a success.
    """
    ordered = sorted(outcomes, key=lambda o: (o.started, o.ended))
    failed_by_kind: dict[str, int] = {}
    for outcome in ordered:
        if not outcome.ok:
            failed_by_kind[outcome.kind] = failed_by_kind.get(outcome.kind, 0) + 1
    unclear = [o for o in ordered if not o.ok and not o.transport_failure and not o.body_is_json_error]
    hung_after_ms = (request_timeout_s + hung_slack_s) * 1000.0
    hung = sum(1 for o in ordered if o.kind == "timeout" or o.latency_ms > hung_after_ms)
    windows = error_windows(ordered)

    fault_start, fault_end = fault_phases(marks)
    before, during, after = [], [], []
    for outcome in ordered:
        if not outcome.ok:
            continue
        if fault_start is None or outcome.started < fault_start:
            before.append(outcome.latency_ms)
        elif fault_end is None or outcome.started < fault_end:
            during.append(outcome.latency_ms)
        else:
            after.append(outcome.latency_ms)

    first_success_after_fault_s = None
    if fault_start is not None:
        first_failure = next((o.started for o in ordered if not o.ok and o.started >= fault_start), fault_start)
        ends = [o.ended for o in ordered if o.ok and o.started >= first_failure]
        if ends:
            first_success_after_fault_s = min(ends) - fault_start

    last = last_requests(ordered, recovery_n)
    return FaultSummary(
        sent=len(ordered),
        succeeded=sum(1 for o in ordered if o.ok),
        failed_by_kind=failed_by_kind,
        unclear_count=len(unclear),
        unclear_failures=[UnclearFailure(o.status, o.kind, o.started, o.body_snippet) for o in unclear],
        hung=hung,
        longest_error_window_s=max((end - start for start, end in windows), default=0.0),
        error_windows=len(windows),
        p99_before_ms=p99(before),
        p99_during_ms=p99(during),
        p99_after_ms=p99(after),
        recovered=len(last) >= recovery_n and all(o.ok for o in last),
        first_success_after_fault_s=first_success_after_fault_s,
        with_retry_after=sum(1 for o in ordered if not o.ok and o.retry_after is not None),
        request_timeout_s=request_timeout_s,
        marks=sorted(marks, key=lambda m: m[1]),
        common_failures=common_failures(ordered),
        last_kinds=[o.kind for o in last],
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _failed_by_status(summary: FaultSummary) -> str:
    if not summary.failed_by_kind:
        return "-"
    return ", ".join(f"{kind.removeprefix('http_')}: {count}" for kind, count in sorted(summary.failed_by_kind.items()))


def format_table(summaries: dict[str, FaultSummary]) -> str:
    """A Markdown table, one row per fault run (for docs and `pytest -s`)."""
    lines = [
        "| fault | sent | ok | failed by status | longest error window (s) | p99 before / during / after (ms) | hung |",
        "|---|---:|---:|---|---:|---|---:|",
    ]
    for name, s in summaries.items():
        p99s = f"{_ms(s.p99_before_ms)} / {_ms(s.p99_during_ms)} / {_ms(s.p99_after_ms)}"
        lines.append(
            f"| {name} | {s.sent} | {s.succeeded} | {_failed_by_status(s)} | {s.longest_error_window_s:.2f} | {p99s} | {s.hung} |"
        )
    return "\n".join(lines)


def print_report(name: str, summary: FaultSummary) -> None:
    """One run's row, its unclear failures and the most common failure
    bodies, for `pytest -s` output."""
    print("\n" + format_table({name: summary}))
    if summary.unclear_count:
        print(f"unclear failures: {summary.unclear_count}, e.g.")
        for failure in summary.unclear_failures[:UNCLEAR_EXAMPLES]:
            print(f"  {failure.status} {failure.snippet!r}")
    for line in format_failures(summary.common_failures):
        print(line)


def assert_fault_contract(
    summary: FaultSummary,
    max_error_window_s: float,
    allow_failures: bool = True,
    foreign: Callable[[UnclearFailure], bool] | None = None,
) -> None:
    """The contract every fault test holds a service to, all broken clauses
    in one AssertionError: nothing hung, every failure said what it was (JSON
    error shape), errors lasted at most `max_error_window_s`, and the run
    ended healthy. `allow_failures=False` (an in-place update) also forbids
    any failure at all. `foreign` excuses unclear failures that a layer the
    platform does not own answers (a test names it and why), when all of the
    examples are such."""
    problems = []
    if summary.hung:
        problems.append(f"{summary.hung} request(s) hung (client timeout {summary.request_timeout_s} s)")
    # Every unclear failure is judged, not just the examples a report shows
    # (CI37 and CI38: six of Serve's 408s, the sixth beyond the examples, failed this).
    if summary.unclear_count and not (foreign and all(foreign(f) for f in summary.unclear_failures)):
        examples = "; ".join(f"{f.status} {f.snippet[:80]!r}" for f in summary.unclear_failures[:UNCLEAR_EXAMPLES])
        problems.append(f"{summary.unclear_count} failure(s) without the JSON error shape, e.g. {examples}")
    if summary.longest_error_window_s > max_error_window_s:
        problems.append(f"clients saw errors for {summary.longest_error_window_s:.2f} s (bound {max_error_window_s} s)")
    if not summary.recovered:
        problems.append(f"did not recover: the last {RECOVERY_N} requests did not all succeed ({', '.join(summary.last_kinds)})")
    if not allow_failures and summary.failed:
        problems.append(f"{summary.failed} request(s) failed where none may: {_failed_by_status(summary)}")
    if problems:
        raise AssertionError("fault contract broken:\n- " + "\n- ".join(problems) + "\n" + format_table({"run": summary})
                             + "\nmost common failures:\n" + "\n".join(format_failures(summary.common_failures)))


def first_error(error: BaseException) -> BaseException:
    """The first of a TaskGroup's errors: all clients usually fail alike
    (e.g. `payload()` raised), and a test reads one traceback better."""
    while isinstance(error, BaseExceptionGroup):
        others = len(error.exceptions) - 1
        error = error.exceptions[0]
        if others:
            error.add_note(f"(and {others} more in other clients)")
    return error


class LoadRun:
    """A closed-loop load in a background thread while the test injects a fault.

        with LoadRun(url, payload, clients=4, request_timeout_s=5) as run:
            run.wait_requests(50)
            run.mark("fault"); kill_replica()
            ...
            run.mark("recovered"); run.wait_successes(20, after_mark=True)
            summary = run.stop()

    The thread has its own asyncio loop, running bench/loadgen.py's
    `ClosedLoop` over one aiohttp.ClientSession. The run ends at `stop()`, after
    `max_seconds` or after `max_requests` requests, whichever comes first.
    `stop()` lets requests in flight answer (each is cut off
    HARD_DEADLINE_EXTRA_S after the client timeout at the latest); leaving
    the with-block on an exception cancels them instead. Either way the
    thread is joined and the client's sockets closed.
    """

    def __init__(
        self,
        url: str,
        payload: Callable[[], Any] | dict[str, Any],
        *,
        clients: int = 4,
        headers: dict[str, str] | None = None,
        request_timeout_s: float = 5.0,
        max_seconds: float = 60.0,
        max_requests: int = 100_000,
        think_s: float = 0.0,
    ) -> None:
        if clients < 1 or max_requests < 1 or not (0 < max_seconds < math.inf) or request_timeout_s <= 0:
            raise ValueError("clients, max_requests, max_seconds and request_timeout_s must be positive and finite")
        self.url = url
        self.payload = payload if callable(payload) else (lambda: payload)
        self.clients = clients
        self.headers = dict(headers or {})
        self.request_timeout_s = request_timeout_s
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.think_s = think_s
        self._load = ClosedLoop(url, clients, request_timeout_s, self.headers)
        self.summary: FaultSummary | None = None
        self._outcomes: list[Outcome] = []
        self._marks: list[tuple[str, float]] = []
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._finished = False
        self._error: BaseException | None = None
        self._started = 0
        self._deadline = math.inf  # set when the loop starts: max_seconds count from then
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main_task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self.client: aiohttp.ClientSession | None = None  # kept so tests can check it was closed

    # -- lifecycle -------------------------------------------------------

    def start(self) -> LoadRun:
        if self._thread is not None:
            raise RuntimeError("a LoadRun starts once")
        self._thread = threading.Thread(target=self._run_thread, name=f"LoadRun {self.url}", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)
        return self

    def __enter__(self) -> LoadRun:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.stop()
        else:  # keep the body's exception; just leave nothing behind
            try:
                self._shutdown(drain=False)
            except Exception as error:
                if exc is not None:
                    exc.add_note(f"and LoadRun's cleanup failed: {error!r}")

    def stop(self) -> FaultSummary:
        """End the run, join the thread, and summarize. Raises what broke
        the load itself (e.g. `payload()` raised), after cleaning up."""
        if self._thread is None:
            raise RuntimeError("stop() before start()")
        if self.summary is None:
            self._shutdown(drain=True)
            if self._error is not None:
                raise self._error
            self.summary = summarize(self.outcomes, self.marks, self.request_timeout_s)
        return self.summary

    def _shutdown(self, drain: bool) -> None:
        assert self._thread is not None
        self._stopping.set()
        self._call_in_loop(self._set_wake)
        if not drain:
            self._call_in_loop(self._cancel_main)
        self._thread.join(self.request_timeout_s + HARD_DEADLINE_EXTRA_S + self.think_s + 3.0)
        if self._thread.is_alive():  # drain took too long: cut the requests off
            self._call_in_loop(self._cancel_main)
            self._thread.join(5.0)
        if self._thread.is_alive():
            raise RuntimeError(f"LoadRun thread for {self.url} did not stop")

    def _call_in_loop(self, callback: Callable[[], None]) -> None:
        try:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop already closed: the thread is ending on its own
            pass

    def _set_wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _cancel_main(self) -> None:
        if self._main_task is not None:
            self._main_task.cancel()

    # -- the loop thread -------------------------------------------------

    def _run_thread(self) -> None:
        try:
            asyncio.run(self._main())
        except asyncio.CancelledError:
            pass  # cancelled by _shutdown(drain=False)
        except BaseException as error:  # noqa: BLE001 (re-raised by stop())
            self._error = first_error(error)
        finally:
            self._ready.set()
            with self._changed:
                self._finished = True
                self._changed.notify_all()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._main_task = asyncio.current_task()
        self._wake = asyncio.Event()
        self._deadline = time.monotonic() + self.max_seconds
        self._ready.set()
        async with self._load.client() as client:
            self.client = client
            await self._load.run(
                client,
                lambda _client: self.payload(),
                may_start=self._may_start,
                record=self._record,
                pause=self._think if self.think_s > 0 else None,
            )

    def _may_start(self) -> bool:
        if self._stopping.is_set() or time.monotonic() >= self._deadline or self._started >= self.max_requests:
            return False
        self._started += 1  # one loop thread: no race between clients
        return True

    def _record(self, outcome: Outcome) -> None:
        with self._changed:
            self._outcomes.append(outcome)
            self._changed.notify_all()

    async def _think(self) -> None:
        """`think_s` between a client's requests, cut short by stop()."""
        assert self._wake is not None
        try:
            await asyncio.wait_for(self._wake.wait(), self.think_s)
        except TimeoutError:
            pass

    # -- what the test uses while the load runs ---------------------------

    @property
    def outcomes(self) -> list[Outcome]:
        """A snapshot of the answered requests, in the order they answered."""
        with self._changed:
            return list(self._outcomes)

    @property
    def marks(self) -> list[tuple[str, float]]:
        with self._changed:
            return list(self._marks)

    def mark(self, label: str) -> float:
        """Record a phase boundary ("fault", "recovered", ...) at monotonic now."""
        now = time.monotonic()
        with self._changed:
            self._marks.append((label, now))
        return now

    def wait_for(
        self, condition: int | Callable[[list[Outcome]], bool], timeout_s: float = 10.0, what: str | None = None
    ) -> list[Outcome]:
        """Block until `condition` holds of the outcomes so far (an int n:
        at least n answered requests) and return that snapshot. TimeoutError
        after `timeout_s`, or at once when the run ended without it holding."""
        if isinstance(condition, int):
            count = condition
            condition, what = (lambda outcomes: len(outcomes) >= count), what or f"{count} requests"
        what = what or getattr(condition, "__name__", "condition")
        deadline = time.monotonic() + timeout_s
        while True:
            with self._changed:
                snapshot, finished = list(self._outcomes), self._finished
            if condition(snapshot):
                return snapshot
            if finished:
                raise TimeoutError(f"the load ended ({len(snapshot)} requests, error: {self._error!r}) before {what}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {what} within {timeout_s} s ({len(snapshot)} requests so far)")
            with self._changed:
                if len(self._outcomes) == len(snapshot) and not self._finished:
                    self._changed.wait(min(remaining, 0.05))

    def _since_mark(self, outcomes: list[Outcome], after_mark: bool) -> list[Outcome]:
        marks = self.marks
        if not after_mark or not marks:
            return outcomes
        since = marks[-1][1]
        return [o for o in outcomes if o.started >= since]

    def wait_requests(self, n: int, timeout_s: float = 10.0, after_mark: bool = False) -> list[Outcome]:
        """n answered requests (started after the last mark, with after_mark)."""
        return self.wait_for(lambda outs: len(self._since_mark(outs, after_mark)) >= n, timeout_s, f"{n} requests")

    def wait_successes(self, n: int, timeout_s: float = 10.0, after_mark: bool = False) -> list[Outcome]:
        """n successes (started after the last mark, with after_mark), e.g. after healing."""
        return self.wait_for(
            lambda outs: sum(o.ok for o in self._since_mark(outs, after_mark)) >= n, timeout_s, f"{n} successes"
        )

    def wait_recovered(self, n: int, timeout_s: float = 10.0) -> list[Outcome]:
        """n successes since the last mark, and the last RECOVERY_N answered
        requests all succeeded: healthy again, not only answering some of the
        time (one of two replicas still failing answers every other request)."""

        def recovered(outcomes: list[Outcome]) -> bool:
            since = self._since_mark(outcomes, after_mark=True)
            last = last_requests(since)
            return sum(o.ok for o in since) >= n and len(last) == RECOVERY_N and all(o.ok for o in last)

        def stays_recovered(since: float) -> Callable[[list[Outcome]], bool]:
            """RECOVERY_N requests started from `since` have answered, or one failed."""
            def answered(outcomes: list[Outcome]) -> bool:
                later = [o for o in outcomes if o.started >= since]
                return len(later) >= RECOVERY_N or any(not o.ok for o in later)
            return answered

        deadline = time.monotonic() + timeout_s
        try:
            # Then the next RECOVERY_N requests started must succeed too: requests
            # still in flight when the first condition held (one replica still
            # reconnecting, say) would otherwise end, failed, among the run's last.
            while True:
                self.wait_for(recovered, max(0.0, deadline - time.monotonic()), f"{n} successes ending in {RECOVERY_N} in a row")
                since = time.monotonic()
                snapshot = self.wait_for(stays_recovered(since), max(0.0, deadline - time.monotonic()),
                                         f"{RECOVERY_N} more successes in a row")
                if all(o.ok for o in snapshot if o.started >= since):
                    return snapshot
        except TimeoutError as error:
            with self._changed:
                since_mark = self._since_mark(list(self._outcomes), after_mark=True)
            error.add_note("failures since the mark:\n" + ("\n".join(format_failures(common_failures(since_mark))) or "  none"))
            raise

    def wait_failures(self, n: int, timeout_s: float = 10.0, after_mark: bool = False) -> list[Outcome]:
        """n failures (started after the last mark, with after_mark): the fault took effect."""
        return self.wait_for(
            lambda outs: sum(not o.ok for o in self._since_mark(outs, after_mark)) >= n, timeout_s, f"{n} failures"
        )
