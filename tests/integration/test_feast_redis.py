"""The cluster's Feast config (configs/feast/cluster/feature_store.yaml, Redis
online store) run for real: a throwaway redis-server on loopback
(local_stack/redis_server.py), the stack's definitions applied with the
cluster file and materialized over the window of the local SQLite store
(local_stack.feast_setup.prepare_cluster_store), read by the platform's own
FeatureLookup with `repo_path: configs/feast/cluster` and only the two
environment variables pointing here. Uses only the `stack` fixture: no Ray.

Each test runs its lookups in one event loop, as a Serve replica does (the
Redis client's connections belong to the loop that opened them)."""
import asyncio
import os
import secrets
import signal
import time
from pathlib import Path

import pytest

from deployments.errors import BackendTimeout, BackendUnavailable
from deployments.nodes.feature_lookup import FeatureLookup, FeatureLookupConfig
from local_stack import feast_setup
from local_stack.redis_server import RedisServer
from local_stack.supervisor import Supervisor

pytestmark = pytest.mark.integration

CLUSTER_REPO = "configs/feast/cluster"
TIMEOUT_S = 1.0
FROZEN_TIMEOUT_S = 0.5  # the frozen-Redis test's lookup timeout
# A lookup cut at its timeout ends when the event loop wakes for the timer and
# the cancelled read has unwound: milliseconds, 0.4 s on a busy 2-core host.
# Below the timeout itself, so a second wait (a retry) cannot pass.
SCHEDULING_TOLERANCE_S = 0.4
# known users and items, plus user 999999 and item 70001 that nobody has
ROWS = [{"user_id": u, "item_id": i} for u, i in [(1, 1), (42, 17), (7, 4), (1000, 500), (999999, 3), (5, 70001), (42, 17)]]
UNKNOWN = {"user_id": [999999], "item_id": [70001]}


def cluster_lookup(env: dict[str, str], **config) -> FeatureLookup:
    """The node the recommend graph builds from configs/cluster.yaml's `features`,
    with the pods' two variables set to `env` while it reads its config."""
    with feast_setup.environment(env):
        return FeatureLookup(FeatureLookupConfig(repo_path=CLUSTER_REPO, timeout_s=config.pop("timeout_s", TIMEOUT_S), **config))


def read(lookup: FeatureLookup, rows=ROWS):
    return asyncio.run(lookup.lookup(rows))


async def timed(lookup: FeatureLookup, rows=ROWS):
    """(frame or the error raised, seconds taken)."""
    started = time.monotonic()
    try:
        result = await lookup.lookup(rows)
    except Exception as error:  # noqa: BLE001 (the test looks at which)
        result = error
    return result, time.monotonic() - started


@pytest.fixture(scope="module")
def local_frame(stack):
    """The same rows from the local stack's SQLite online store."""
    frame = read(FeatureLookup(FeatureLookupConfig(repo_path=str(stack.feast_repo))))
    assert frame.missing == UNKNOWN
    return frame


@pytest.fixture(scope="module")
def redis(stack):
    """The module's Redis, supervised: a crash is restarted (empty: see rematerialized)."""
    supervised = Supervisor(RedisServer(log_file=stack.logs / "redis-tests.log"))
    supervised.start()
    yield supervised
    supervised.close()


@pytest.fixture(scope="module")
def cluster_env(stack, redis, tmp_path_factory):
    registry = tmp_path_factory.mktemp("feast-redis") / "registry.db"
    return feast_setup.prepare_cluster_store(stack, redis.connection_string, registry)


@pytest.fixture(autouse=True)
def rematerialized(request, stack):
    """A Redis that restarted (it crashed, or an earlier test left it down:
    tests/integration/conftest.py brings it back) is empty: materialize it
    again before the next test, so one fault fails one test."""
    if "cluster_env" not in request.fixturenames:
        return
    import redis as redis_client

    server, env = request.getfixturevalue("redis"), request.getfixturevalue("cluster_env")
    if redis_client.Redis(host="127.0.0.1", port=server.port, socket_timeout=5).dbsize() == 0:
        feast_setup.prepare_cluster_store(stack, server.connection_string, Path(env["FEAST_REGISTRY_PATH"]))


@pytest.fixture(scope="module")
def secured(stack, tmp_path_factory):
    """A Redis with a password (protected mode on, as every server here), materialized."""
    with RedisServer(password=secrets.token_hex(16), log_file=stack.logs / "redis-tests.log") as server:
        registry = tmp_path_factory.mktemp("feast-redis-secured") / "registry.db"
        env = feast_setup.prepare_cluster_store(stack, server.connection_string, registry)
        yield server, env


def test_the_throwaway_redis_is_loopback_only_and_keeps_nothing(redis, secured):
    import redis as redis_py

    server, _ = secured
    client = redis_py.Redis(host="127.0.0.1", port=server.port, password=server.password, socket_timeout=2)
    config = client.config_get("*")
    assert (config["bind"], config["protected-mode"], config["save"], config["appendonly"]) == ("127.0.0.1", "yes", "", "no")
    assert config["requirepass"] == server.password
    import psutil

    assert server.password not in " ".join(psutil.Process(server.process.pid).cmdline()), "the password is in the process list"
    assert server.ping() and redis.ping()
    with pytest.raises(redis_py.AuthenticationError):
        redis_py.Redis(host="127.0.0.1", port=server.port, socket_timeout=2, retry=None).ping()
    with pytest.raises(RuntimeError, match="exited with code"):  # the port is taken
        RedisServer(port=server.port).start()
    client.close()


@pytest.mark.parametrize("read_path", ["direct", "get_online_features"])
@pytest.mark.parametrize("call", ["auto", "thread"])
def test_redis_store_returns_the_same_features_as_the_local_sqlite_store(redis, cluster_env, local_frame, call, read_path):
    lookup = cluster_lookup(cluster_env, call=call, read=read_path)
    assert lookup.store.config.online_store.type == "redis"
    assert lookup.store.config.online_store.connection_string.startswith(f"127.0.0.1:{redis.port},")
    assert lookup.call == ("async" if call == "auto" else "thread")  # auto: Feast's async Redis read, as the recommend graph runs it

    frame = read(lookup)

    assert frame.values == local_frame.values
    assert frame.timestamps == local_frame.timestamps
    assert frame.missing == local_frame.missing == UNKNOWN
    known, unknown_user, unknown_item = 0, 4, 5
    assert frame.values["user_features__age"][known] is not None
    assert frame.values["user_features__age"][unknown_user] is None
    assert frame.values["item_features__price"][unknown_item] is None
    assert frame.values["item_features__price"][unknown_user] is not None  # item 3 is known


def test_the_right_password_reads_the_features(secured, local_frame):
    server, env = secured
    frame = read(cluster_lookup(env))
    assert frame.values == local_frame.values and frame.missing == UNKNOWN


@pytest.mark.parametrize(
    "password, reason",
    [("wrong-" + secrets.token_hex(8), "invalid username-password pair"), (None, "Authentication required")],
    ids=["wrong-password", "no-password"],
)
def test_a_wrong_password_is_a_clear_backend_error_at_once(secured, password, reason):
    server, env = secured
    connection = f"127.0.0.1:{server.port}" + (f",password={password}" if password else "") + ",ssl=false"
    lookup = cluster_lookup({**env, "FEAST_REDIS_CONNECTION": connection})

    async def scenario():
        return await timed(lookup), await lookup.ready()

    (error, took), (ready, why) = asyncio.run(scenario())

    assert type(error) is BackendUnavailable, error  # not a BackendTimeout hiding the cause
    assert error.status == 503 and error.headers == {"Retry-After": "1"}
    body = error.body()["error"]
    assert body["code"] == "backend_unavailable" and body["backend"] == "feast"
    assert body["reason"] == "AuthenticationError", "the class only: Redis's text is for the log and /readyz's keyed detail"
    # At once: before the timeout could fire. redis-py's own retries (1 s
    # backoff and more) would wait it out; one refused AUTH is a round trip.
    assert took < TIMEOUT_S
    assert not ready and reason in why
    for secret in (server.password, password):
        if secret:
            assert secret not in str(body) and secret not in why


def test_redis_stopped_fails_fast_and_recovers_after_a_restart_without_a_new_lookup(stack, tmp_path):
    registry = tmp_path / "registry.db"
    with RedisServer(log_file=stack.logs / "redis-tests.log") as server:
        env = feast_setup.prepare_cluster_store(stack, server.connection_string, registry)
        lookup = cluster_lookup(env)

        async def scenario():
            before, _ = await timed(lookup)
            server.stop()
            down = [await timed(lookup) for _ in range(3)]  # the pooled connection, then new connects
            ready_down = await lookup.ready()
            server.start()  # same port, empty: nothing was persisted
            empty, _ = await timed(lookup)
            await asyncio.to_thread(feast_setup.prepare_cluster_store, stack, server.connection_string, registry)
            after, _ = await timed(lookup)
            return before, down, ready_down, empty, after

        before, down, ready_down, empty, after = asyncio.run(scenario())

    assert before.values["user_features__age"][0] is not None
    for error, took in down:
        assert isinstance(error, BackendUnavailable) and not isinstance(error, BackendTimeout), error
        assert "ConnectionError" in error.body()["error"]["reason"]
        assert took < TIMEOUT_S  # fails fast: a refused connect, not a wait for the timeout
    assert not any(f"127.0.0.1:{server.port}" in str(error.body()) for error, _ in down), "no host or port in a body"
    assert ready_down[0] is False and "ConnectionError" in ready_down[1] and f"127.0.0.1:{server.port}" in ready_down[1]
    # back, but not yet materialized: every entity unknown, no error
    assert empty.missing == {"user_id": [1, 42, 7, 1000, 999999, 5], "item_id": [1, 17, 4, 500, 3, 70001]}
    assert after.values == before.values and after.missing == UNKNOWN


def test_a_frozen_redis_times_out_at_the_configured_bound_then_recovers(redis, cluster_env):
    """SIGSTOP: connections accepted by the kernel, no answer. The lookup ends
    at its timeout (the client itself has no socket timeout), then works again."""
    lookup = cluster_lookup(cluster_env, timeout_s=FROZEN_TIMEOUT_S)

    async def scenario():
        before, _ = await timed(lookup)
        os.kill(redis.process.pid, signal.SIGSTOP)
        try:
            frozen = await timed(lookup)
        finally:
            os.kill(redis.process.pid, signal.SIGCONT)
        after, _ = await timed(lookup)
        return before, frozen, after

    before, (error, took), after = asyncio.run(scenario())

    assert isinstance(error, BackendTimeout), error
    assert error.body()["error"] == {
        "code": "backend_timeout", "message": f"feast did not answer within {FROZEN_TIMEOUT_S} s", "backend": "feast",
        "timeout_s": FROZEN_TIMEOUT_S,
    }
    assert FROZEN_TIMEOUT_S <= took < FROZEN_TIMEOUT_S + SCHEDULING_TOLERANCE_S
    assert after.values == before.values


def test_feature_lookup_refuses_to_start_without_the_environment(cluster_env):
    from deployments.paths import PROJECT_ROOT

    for name in feast_setup.CLUSTER_ENV:
        env = {key: value for key, value in cluster_env.items() if key != name}
        saved = os.environ.pop(name, None)
        try:
            with pytest.raises(ValueError, match=f"needs the environment variable\\(s\\) {name}, unset here"):
                cluster_lookup(env)
        finally:
            if saved is not None:
                os.environ[name] = saved
    assert sorted(p.name for p in (PROJECT_ROOT / CLUSTER_REPO).iterdir()) == ["feature_store.yaml"]
