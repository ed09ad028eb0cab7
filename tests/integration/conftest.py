"""Before each integration test, the session's backends it uses are up.

One fault must fail one test, not the rest of the session: a test that
stopped Triton and failed before restarting it, a Triton that crashed, a
recommend graph left unready or a chat engine being replaced are restored
(or waited for) here, and the output says so."""
from __future__ import annotations

import time

import pytest

from tests.servers import restore, wait_http


RESTORED: list[str] = []  # listed again in the session's summary


def _report(request, what: str) -> None:
    line = f"[backends] before {request.node.nodeid}: {what}"
    RESTORED.append(line)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:  # shown as it happens, not only when the test fails
        reporter.write_line("\n" + line, yellow=True)


def pytest_terminal_summary(terminalreporter):
    if RESTORED:
        terminalreporter.section("backends restored before a test")
        for line in RESTORED:
            terminalreporter.write_line(line)


def _answers(url: str, timeout_s: float) -> bool:
    try:
        wait_http(url, timeout_s=timeout_s)
        return True
    except TimeoutError:
        return False


@pytest.fixture(autouse=True)
def healthy_backends(request):
    used = set(request.fixturenames)
    if "triton" in used:
        done = request.getfixturevalue("triton").ensure_ready()
        if done:
            _report(request, done)
    if "redis" in used:  # test_feast_redis.py's module Redis
        done = request.getfixturevalue("redis").ensure_ready()
        if done:
            _report(request, done)
    if "recommend_url" in used:
        url = request.getfixturevalue("recommend_url")
        if not _answers(f"{url}/readyz", timeout_s=30):
            _report(request, "the recommend graph was not ready: redeploying the session's config")
            restore(request.getfixturevalue("serve_config"))
            if not _answers(f"{url}/readyz", timeout_s=120):
                pytest.fail("the recommend graph did not become ready again after a redeploy")
    if "chat_url" in used:
        # Its health route: open with or without API keys (test_chat_keys.py deploys it with keys).
        ready = request.getfixturevalue("chat_url").removesuffix("/v1") + "/readyz"
        started = time.monotonic()
        if not _answers(ready, timeout_s=180):  # Serve replaces a dead engine by itself
            _report(request, "the chat app was not ready for 180 s: redeploying the session's config")
            restore(request.getfixturevalue("serve_config"))
            if not _answers(ready, timeout_s=300):
                pytest.fail("the chat app did not become ready again after a redeploy")
        if time.monotonic() - started > 1:
            _report(request, f"waited {time.monotonic() - started:.0f} s for the chat engine")
    yield
