"""The recommend graph, served by Serve, through the Open Inference Protocol's
REST routes with the official `tritonclient.http`, unchanged: metadata,
health, and an inference whose ranking is the JSON route's."""
from __future__ import annotations

import json
import shlex
import subprocess

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration

USER, ITEMS = 42, [3, 17, 99, 250, 5]


@pytest.fixture
def client(recommend_url):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(recommend_url.removeprefix("http://"), network_timeout=30)
    yield client
    client.close()


def test_tritonclient_reads_health_and_the_graphs_metadata(client):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("recommend")
    metadata = client.get_model_metadata("recommend")
    assert {t["name"]: (t["datatype"], t["shape"]) for t in metadata["inputs"]} == {
        "user_id": ("INT64", [1]), "item_ids": ("INT64", [-1]), "k": ("INT64", [1]), "explain": ("BOOL", [1]),
    }
    assert {t["name"] for t in metadata["outputs"]} == {"user_id", "items", "model", "explanation"}
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]


def test_tritonclient_infer_gives_the_json_routes_ranking(client, recommend_url):
    import tritonclient.http as triton

    inputs = []
    for name, values in (("user_id", [USER]), ("item_ids", ITEMS), ("k", [3]), ("explain", [False])):
        array = np.array(values, dtype=np.bool_ if name == "explain" else np.int64)
        tensor = triton.InferInput(name, list(array.shape), "BOOL" if name == "explain" else "INT64")
        tensor.set_data_from_numpy(array)  # the binary tensor extension, tritonclient's default
        inputs.append(tensor)
    result = client.infer("recommend", inputs, request_id="oip-1")

    plain = httpx.post(recommend_url, json={"user_id": USER, "item_ids": ITEMS, "k": 3, "explain": False}, timeout=30).json()
    items = [json.loads(text) for text in result.as_numpy("items")]
    assert [i["item_id"] for i in items] == [i["item_id"] for i in plain["items"]]
    assert [i["score"] for i in items] == pytest.approx([i["score"] for i in plain["items"]])
    assert result.as_numpy("user_id").tolist() == [USER]
    assert json.loads(result.as_numpy("model")[0]) == plain["model"]
    assert result.get_response()["id"] == "oip-1"


def test_bad_tensors_and_unknown_entities_answer_in_the_protocols_format(recommend_url):
    infer = f"{recommend_url}/v2/models/recommend/infer"
    wrong = {"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["42"]},
                        {"name": "item_ids", "datatype": "INT64", "shape": [1], "data": [3]}]}
    response = httpx.post(infer, json=wrong, timeout=30)
    assert response.status_code == 400 and response.json() == {"error": "input 'user_id': datatype 'BYTES', expected INT64"}

    unknown = {"inputs": [{"name": "user_id", "datatype": "INT64", "shape": [1], "data": [999999]},
                          {"name": "item_ids", "datatype": "INT64", "shape": [1], "data": [3]}]}
    response = httpx.post(infer, json=unknown, timeout=30)
    assert response.status_code == 404 and "999999" in response.json()["error"]

    response = httpx.post(f"{recommend_url}/v2/models/ranker/infer", json=unknown, timeout=30)
    assert response.status_code == 404 and response.json() == {"error": "unknown model 'ranker': this graph is 'recommend'"}


def test_the_demos_tritonclient_example_works_as_printed(recommend_url):
    from local_stack.demo import oip_example
    from local_stack.paths import PROJECT_ROOT

    command = oip_example(recommend_url.removesuffix("/recommend"))
    run = subprocess.run(shlex.split(command), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert '"item_id"' in run.stdout and '"score"' in run.stdout  # the ranked items, as JSON text
