"""configs/local.yaml's ensemble app under Serve: the ONNX ranker on Triton, a
scikit-learn ranker on MLServer (the second v2 server, through the same
`v2_model` node) and a PyTorch ranker in its own Serve deployment, averaged.
Each member's scores are checked against the model called directly (the
registered scikit-learn pipeline and torch module, Triton's own answer); with
MLServer stopped the soft member is null with the reason, a hard one is a
503 naming it, and both recover when it is back; a moved alias of the
PyTorch model is followed live, with no failed or mixed request. On a copy
of the registry, so the alias moves touch nothing else."""
from __future__ import annotations

import asyncio
import copy
import threading
import time

import httpx
import numpy as np
import pytest

from local_stack.serve_configs import application, local_config
from tests.servers import deploy, registry_copy, restore, wait_app, wait_http

pytestmark = pytest.mark.integration

BODY = {"user_id": 11, "item_ids": [4, 9, 16, 25, 36, 49], "k": 6}


@pytest.fixture(scope="module")
def registry(stack, tmp_path_factory):
    client, uri = registry_copy(stack, tmp_path_factory.mktemp("ensemble"), {})
    client.set_registered_model_alias("ranker_torch", "champion", "1")
    return client, uri


@pytest.fixture(scope="module")
def ensemble(serve_config, triton, mlserver, recommend_url, registry):
    """The shipped ensemble app (its torch node polling its alias every second)
    and a copy whose MLServer member is hard and that has no torch node."""
    _, uri = registry
    app = application(local_config(serve_config["http_options"]["port"], triton.grpc_url, mlserver_grpc=mlserver.grpc_url), "ensemble")
    nodes = app["args"]["graph"]["nodes"]
    for node in nodes.values():
        if "registry_uri" in node.get("config", {}):
            node["config"]["registry_uri"] = uri
    nodes["torch"]["config"]["alias_poll_s"] = 1
    hard = copy.deepcopy(app)
    hard.update(name="ensemble-hard", route_prefix="/ensemble-hard")
    graph = hard["args"]["graph"]
    graph["name"] = "ensemble_hard"
    del graph["nodes"]["torch"]
    graph["nodes"]["sklearn"].update(dependency="hard")
    del graph["nodes"]["sklearn"]["cooldown_s"]
    graph["nodes"]["mean"]["inputs"]["outputs"] = ["onnx", "sklearn"]
    graph["flow"]["steps"][1]["branches"] = [{"kind": "node", "node": "onnx"}, {"kind": "node", "node": "sklearn"}]
    config = copy.deepcopy(serve_config)
    config["applications"] += [app, hard]
    deploy(config)
    base = recommend_url.removesuffix("/recommend")
    for name in ("ensemble", "ensemble-hard"):
        wait_app(name, {"RUNNING"}, timeout_s=240)
        wait_http(f"{base}/{name}/readyz", timeout_s=60)
    yield {"soft": f"{base}/ensemble", "hard": f"{base}/ensemble-hard"}
    restore(serve_config)


@pytest.fixture(scope="module")
def members(stack, triton, registry):
    """Each member's scores of BODY's items, by model and version, from the models called directly."""
    import mlflow.pytorch
    import mlflow.sklearn
    import torch

    from deployments.nodes.feature_lookup import FeatureLookup, FeatureLookupConfig
    from deployments.nodes.v2_model import V2Model, V2ModelConfig
    from deployments.registry import resolve_alias

    _, uri = registry
    lookup = FeatureLookup(FeatureLookupConfig())
    frame = asyncio.run(lookup.lookup([{"user_id": BODY["user_id"], "item_id": item} for item in BODY["item_ids"]]))
    columns = resolve_alias(uri, "ranker", "champion").input_features
    x = frame.matrix(columns).astype(np.float32)
    mlflow.set_tracking_uri(uri)
    try:
        sklearn = mlflow.sklearn.load_model("models:/ranker_sklearn@champion").predict_proba(x)[:, 1]
        torch_scores = {}
        for version in ("1", "2"):
            module = mlflow.pytorch.load_model(f"models:/ranker_torch/{version}")
            with torch.no_grad():
                torch_scores[version] = module(torch.from_numpy(x)).reshape(-1).numpy()
    finally:
        mlflow.set_tracking_uri("")

    async def on_triton():
        model = V2Model(V2ModelConfig(url=triton.grpc_url, registry_uri=uri, timeout_s=10))
        try:
            return await model.infer(x)
        finally:
            await model.close()

    return {"onnx": asyncio.run(on_triton()), "sklearn": sklearn, "torch": torch_scores}


def ranking(scores: np.ndarray) -> list[tuple[int, float]]:
    order = np.argsort(-scores, kind="stable")
    return [(BODY["item_ids"][i], float(scores[i])) for i in order]


def answered(answer: dict) -> list[tuple[int, float]]:
    return [(item["item_id"], item["score"]) for item in answer["items"]]


def assert_ranked(answer: dict, expected: np.ndarray) -> None:
    got, want = answered(answer), ranking(expected)
    assert [i for i, _ in got] == [i for i, _ in want]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-5)


def test_the_ensemble_averages_triton_mlserver_and_the_torch_deployment(ensemble, members):
    answer = httpx.post(ensemble["soft"], json=BODY, timeout=30).json()
    assert [(m["name"], m["version"]) for m in answer["models"]] == [("ranker", "1"), ("ranker_sklearn", "1"), ("ranker_torch", "1")]
    assert_ranked(answer, (members["onnx"] + members["sklearn"] + members["torch"]["1"]) / 3)
    # and the members themselves are not one model thrice
    assert not np.allclose(members["sklearn"], members["onnx"], atol=1e-3)
    assert not np.allclose(members["torch"]["1"], members["sklearn"], atol=1e-3)


def test_mlserver_stopped_soft_member_null_hard_503_naming_it_and_both_recover(ensemble, members, mlserver):
    mlserver.stop()
    try:
        soft = httpx.post(ensemble["soft"], json=BODY, timeout=30)
        hard = httpx.post(ensemble["hard"], json=BODY, timeout=30)
        assert soft.status_code == 200, soft.text
        assert "mlserver" in soft.json()["errors"]["sklearn"], soft.json()["errors"]
        assert [m["name"] for m in soft.json()["models"]] == ["ranker", "ranker_torch"]
        assert_ranked(soft.json(), (members["onnx"] + members["torch"]["1"]) / 2)
        assert hard.status_code == 503, hard.text
        assert "mlserver" in hard.json()["error"]["message"], hard.json()
    finally:
        mlserver.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        soft = httpx.post(ensemble["soft"], json=BODY, timeout=30).json()
        hard = httpx.post(ensemble["hard"], json=BODY, timeout=30)
        if len(soft.get("models", [])) == 3 and hard.status_code == 200:
            break
        time.sleep(1)
    assert len(soft["models"]) == 3 and hard.status_code == 200, (soft, hard.text)
    assert_ranked(hard.json(), (members["onnx"] + members["sklearn"]) / 2)


def test_the_torch_deployment_follows_a_moved_alias_live_with_no_failed_or_mixed_request(ensemble, members, registry):
    client, _ = registry
    outcomes: list[tuple[int, dict]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                response = http.post(ensemble["soft"], json=BODY)
                outcomes.append((response.status_code, response.json() if response.status_code == 200 else {"text": response.text}))

    threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(3)
        client.set_registered_model_alias("ranker_torch", "champion", "2")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                status == 200 and body["models"][-1]["version"] == "2" for status, body in outcomes[-5:]):
            time.sleep(0.5)
        time.sleep(2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        client.set_registered_model_alias("ranker_torch", "champion", "1")
    assert [status for status, _ in outcomes if status != 200] == [], [body for status, body in outcomes if status != 200][:3]
    versions = [body["models"][-1]["version"] for _, body in outcomes]
    assert versions[0] == "1" and versions[-1] == "2", versions
    for _, body in outcomes:  # each answer's scores are those of the version it names
        torch_version = body["models"][-1]["version"]
        assert_ranked(body, (members["onnx"] + members["sklearn"] + members["torch"][torch_version]) / 3)
