"""POST /recommend end to end: real Feast, MLflow, Triton and Ray Serve."""
import json
from datetime import datetime

import httpx
import numpy as np
import onnxruntime as ort
import pytest

pytestmark = pytest.mark.integration


USER = 42
ITEMS = [3, 17, 99, 250, 5, 411, 78, 12, 300, 64]


@pytest.fixture(scope="module")
def registry(stack):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.mlflow_uri, registry_uri=stack.mlflow_uri)


def expected_scores(stack, registry, alias: str, user: int, items: list[int]) -> np.ndarray:
    """Score the same features with onnxruntime directly, outside the platform."""
    from feast import FeatureStore

    from deployments.registry import download_version

    version = registry.get_model_version_by_alias("ranker", alias)
    columns = json.loads(version.tags["input_features"])
    store = FeatureStore(repo_path=str(stack.feast_repo))
    rows = [{"user_id": user, "item_id": item} for item in items]
    online = store.get_online_features(features=store.get_feature_service("ranking"), entity_rows=rows, full_feature_names=True).to_dict()
    x = np.asarray([online[c] for c in columns], dtype=np.float32).T
    (onnx_file,) = download_version(stack.mlflow_uri, "ranker", version.version).rglob("*.onnx")
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    return session.run(None, {"features": x})[0].reshape(-1)


def test_ranking_matches_onnxruntime_on_the_same_features(recommend_url, stack, registry):
    response = httpx.post(recommend_url, json={"user_id": USER, "item_ids": ITEMS, "k": 4, "explain": False}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["items"]) == min(4, len(ITEMS))
    scores = expected_scores(stack, registry, "champion", USER, ITEMS)
    best = np.argsort(-scores, kind="stable")[:4]
    assert [item["item_id"] for item in body["items"]] == [ITEMS[i] for i in best]
    assert [item["score"] for item in body["items"]] == pytest.approx([float(scores[i]) for i in best], rel=1e-5)


def test_reports_the_registry_version_behind_the_alias(recommend_url, registry):
    body = httpx.post(recommend_url, json={"user_id": USER, "item_ids": ITEMS, "k": 2, "explain": False}, timeout=30).json()
    champion = registry.get_model_version_by_alias("ranker", "champion")
    assert body["model"] == {"name": "ranker", "version": str(champion.version), "alias": "champion"}


def test_reports_feature_timestamps_and_node_latency(recommend_url, stack):
    import pandas as pd

    response = httpx.post(recommend_url, json={"user_id": USER, "item_ids": ITEMS, "k": 3, "explain": False}, timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["items"]) == min(3, len(ITEMS))  # the loop below checks each of them
    users = pd.read_parquet(stack.data / "users.parquet").set_index("user_id")
    items = pd.read_parquet(stack.data / "items.parquet").set_index("item_id")
    for item in body["items"]:
        written = {view: datetime.fromisoformat(when) for view, when in item["feature_timestamps"].items()}
        assert written == {
            "item_features": items.loc[item["item_id"], "event_timestamp"].to_pydatetime(),
            "user_features": users.loc[USER, "event_timestamp"].to_pydatetime(),
        }
    latency = body["latency_ms"]
    assert set(latency) == {"features", "ranker", "ranking", "total"}
    assert all(value > 0 for value in latency.values())
    assert latency["total"] >= latency["features"] + latency["ranker"]


def test_k_larger_than_the_candidates_returns_them_all(recommend_url):
    body = httpx.post(recommend_url, json={"user_id": USER, "item_ids": [1, 2], "k": 10, "explain": False}, timeout=30).json()
    assert len(body["items"]) == min(10, 2)
    assert sorted(item["item_id"] for item in body["items"]) == [1, 2]


def test_http_protocol_gives_the_same_scores_as_grpc(triton, stack, serve_config):
    """The Triton node speaks both protocols against the same server."""
    import asyncio

    from deployments.nodes.v2_model import V2Model, V2ModelConfig

    batch = np.random.default_rng(0).random((5, 12), dtype=np.float32)

    async def score(protocol: str, url: str) -> np.ndarray:
        node = V2Model(V2ModelConfig(url=url, protocol=protocol, registry_uri=stack.mlflow_uri))
        try:
            assert (await node.ready())[0]
            return await node.infer(batch)
        finally:
            await node.close()

    grpc_scores = asyncio.run(score("grpc", triton.grpc_url))
    http_scores = asyncio.run(score("http", triton.http_url.removeprefix("http://")))
    assert serve_config["applications"][0]["args"]["graph"]["nodes"]["ranker"]["config"]["protocol"] == "grpc"
    np.testing.assert_allclose(grpc_scores, http_scores, rtol=1e-6)


def test_a_triton_slow_to_answer_a_new_connection_is_waited_for(triton, stack):
    """A new channel's first call, when Triton takes 300 ms to answer the
    connection (a loaded node, new replicas starting): the call waits for the
    handshake within its own timeout instead of failing at once. (gRPC's
    `min_reconnect_backoff_ms` is also its connect timeout: set to 100 ms, it
    failed new replicas' first calls with "failed to connect to all
    addresses" during an in-place update under load.)"""
    import asyncio

    from deployments.nodes.v2_model import V2Model, V2ModelConfig

    host, port = triton.grpc_url.rsplit(":", 1)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def slow_to_answer(client_reader, client_writer) -> None:
        await asyncio.sleep(0.3)
        server_reader, server_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer),
                             return_exceptions=True)

    async def scores() -> np.ndarray:
        proxy = await asyncio.start_server(slow_to_answer, "127.0.0.1", 0)
        url = f"127.0.0.1:{proxy.sockets[0].getsockname()[1]}"
        node = V2Model(V2ModelConfig(url=url, registry_uri=stack.mlflow_uri, timeout_s=5.0))
        try:
            return await node.infer(np.zeros((3, 12), dtype=np.float32))
        finally:
            await node.close()
            proxy.close()

    assert asyncio.run(scores()).shape == (3,)


def test_health_and_readiness(recommend_url):
    assert httpx.get(f"{recommend_url}/healthz").json()["status"] == "live"
    ready = httpx.get(f"{recommend_url}/readyz")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert {name: check["ready"] for name, check in checks.items()} == {"features": True, "ranker": True}
    assert checks["ranker"]["detail"] == "ranker version 1 (@champion)"  # the registry alias and the version it resolved to


def test_feature_lookup_call_mode_follows_the_online_store(stack):
    from deployments.nodes.feature_lookup import FeatureLookup, FeatureLookupConfig

    repo = str(stack.feast_repo)
    assert FeatureLookup(FeatureLookupConfig(repo_path=repo)).call == "inline"  # SQLite: local file read
    assert FeatureLookup(FeatureLookupConfig(repo_path=repo, call="thread")).call == "thread"
    with pytest.raises(ValueError, match="sqlite online store has no async read"):
        FeatureLookup(FeatureLookupConfig(repo_path=repo, call="async"))
