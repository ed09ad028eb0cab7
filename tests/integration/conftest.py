"""Before each integration test, the session's backends it uses are up.

One fault must fail one test, not the rest of the session: a test that
stopped Triton and failed before restarting it, a Triton that crashed, a
recommend graph left unready or a chat engine being replaced are restored
(or waited for) here, and the output says so."""
from __future__ import annotations

import time

import httpx
import pytest

from tests.servers import restore


def _report(request, what: str) -> None:
    print(f"\n[backends] before {request.node.nodeid}: {what}", flush=True)


def _answers(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


@pytest.fixture(autouse=True)
def healthy_backends(request):
    used = set(request.fixturenames)
    if "triton" in used:
        done = request.getfixturevalue("triton").ensure_ready()
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
        url = request.getfixturevalue("chat_url")
        started = time.monotonic()
        if not _answers(f"{url}/models", timeout_s=300):
            pytest.fail("the chat app did not answer /v1/models within 300 s (Serve replaces a dead engine by itself)")
        if time.monotonic() - started > 1:
            _report(request, f"waited {time.monotonic() - started:.0f} s for the chat engine")
    yield
