"""The recommend graph, served by Serve, through the Open Inference Protocol
over gRPC (Serve's own gRPC proxy): the official `tritonclient.grpc`,
unchanged, reads health and metadata and gets the JSON route's ranking; bad
tensors are INVALID_ARGUMENT naming the tensor, sent as raw messages through
the protocol's generated stub (tritonclient checks shapes before sending)."""
from __future__ import annotations

import json
import shlex
import subprocess

import grpc
import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration

USER, ITEMS = 42, [3, 17, 99, 250, 5]
APP = {"application": "recommend"}  # Serve's gRPC proxy routes by it once a config holds several apps


@pytest.fixture(scope="module")
def grpc_address(serve_config, recommend_url):
    return f"127.0.0.1:{serve_config['grpc_options']['port']}"


@pytest.fixture
def client(grpc_address):
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(grpc_address)
    yield client
    client.close()


@pytest.fixture
def stub(grpc_address):
    from tritonclient.grpc import service_pb2_grpc

    channel = grpc.insecure_channel(grpc_address)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def infer_inputs(values: dict) -> list:
    import tritonclient.grpc as triton

    inputs = []
    for name, data in values.items():
        array = np.array(data, dtype=np.bool_ if name == "explain" else np.int64)
        tensor = triton.InferInput(name, list(array.shape), "BOOL" if name == "explain" else "INT64")
        tensor.set_data_from_numpy(array)  # raw_input_contents, tritonclient's way
        inputs.append(tensor)
    return inputs


def test_tritonclient_grpc_reads_health_and_the_graphs_metadata(client):
    assert client.is_server_live(headers=APP) and client.is_server_ready(headers=APP)
    assert client.is_model_ready("recommend", headers=APP)
    metadata = client.get_model_metadata("recommend", headers=APP, as_json=True)
    assert {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in metadata["inputs"]} == {
        "user_id": ("INT64", [1]), "item_ids": ("INT64", [-1]), "k": ("INT64", [1]), "explain": ("BOOL", [1]),
    }
    assert {t["name"] for t in metadata["outputs"]} == {"user_id", "items", "model", "explanation"}


def test_tritonclient_grpc_infer_gives_the_json_routes_ranking(client, recommend_url):
    result = client.infer("recommend", infer_inputs({"user_id": [USER], "item_ids": ITEMS, "k": [3], "explain": [False]}),
                          request_id="grpc-1", headers=APP)
    plain = httpx.post(recommend_url, json={"user_id": USER, "item_ids": ITEMS, "k": 3, "explain": False}, timeout=30).json()
    items = [json.loads(text) for text in result.as_numpy("items")]
    assert [i["item_id"] for i in items] == [i["item_id"] for i in plain["items"]]
    assert [i["score"] for i in items] == pytest.approx([i["score"] for i in plain["items"]])
    assert result.as_numpy("user_id").tolist() == [USER]
    assert json.loads(result.as_numpy("model")[0]) == plain["model"]
    assert result.get_response().id == "grpc-1"


def test_typed_contents_are_read_like_raw_ones(stub, recommend_url):
    """KServe's and Seldon's clients send `contents` rather than raw bytes."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="recommend")
    request.inputs.add(name="user_id", datatype="INT64", shape=[1]).contents.int64_contents.extend([USER])
    request.inputs.add(name="item_ids", datatype="INT64", shape=[len(ITEMS)]).contents.int64_contents.extend(ITEMS)
    request.inputs.add(name="explain", datatype="BOOL", shape=[1]).contents.bool_contents.extend([False])
    request.outputs.add(name="items")
    answer = stub.ModelInfer(request, metadata=tuple(APP.items()), timeout=30)
    assert [o.name for o in answer.outputs] == ["items"]
    plain = httpx.post(recommend_url, json={"user_id": USER, "item_ids": ITEMS, "explain": False}, timeout=30).json()
    from tritonclient.utils import deserialize_bytes_tensor

    ranked = [json.loads(item)["item_id"] for item in deserialize_bytes_tensor(answer.raw_output_contents[0])]
    assert ranked == [i["item_id"] for i in plain["items"]]


def _tensor(request, name, datatype, shape, raw: bytes) -> None:
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)


def _int64(*values: int) -> bytes:
    return np.array(values, dtype="<i8").tobytes()


BAD_REQUESTS = {
    "missing": ([("item_ids", "INT64", [2], _int64(1, 2))], "input 'user_id': missing"),
    "unknown": ([("user_id", "INT64", [1], _int64(USER)), ("item_ids", "INT64", [1], _int64(1)), ("colour", "INT64", [1], _int64(1))],
                "input 'colour': not an input of this graph"),
    "wrong datatype": ([("user_id", "FP32", [1], np.array([1.0], "<f4").tobytes()), ("item_ids", "INT64", [1], _int64(1))],
                       "input 'user_id': datatype 'FP32', expected INT64"),
    "bytes for int64": ([("user_id", "BYTES", [1], b"\x02\x00\x00\x0042"), ("item_ids", "INT64", [1], _int64(1))],
                        "input 'user_id': datatype 'BYTES', expected INT64"),
    "shape against data": ([("user_id", "INT64", [1], _int64(USER)), ("item_ids", "INT64", [3], _int64(1, 2))],
                           "input 'item_ids': shape [3] holds 3 elements, the data has 2"),
    "empty": ([("user_id", "INT64", [1], _int64(USER)), ("item_ids", "INT64", [0], b"")], "item_ids"),
    "oversized": ([("user_id", "INT64", [1], _int64(USER)), ("item_ids", "INT64", [5000], _int64(*range(5000)))], "item_ids"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_tensor_is_invalid_argument_naming_it(stub, case):
    from tritonclient.grpc import service_pb2

    tensors, expected = BAD_REQUESTS[case]
    request = service_pb2.ModelInferRequest(model_name="recommend")
    for tensor in tensors:
        _tensor(request, *tensor)
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(request, metadata=tuple(APP.items()), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert expected in raised.value.details()


def test_unknown_models_and_entities_are_not_found(stub):
    from tritonclient.grpc import service_pb2

    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="ranker"), metadata=tuple(APP.items()), timeout=30)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "unknown model 'ranker': this graph is 'recommend'"

    request = service_pb2.ModelInferRequest(model_name="recommend")
    _tensor(request, "user_id", "INT64", [1], _int64(999999))
    _tensor(request, "item_ids", "INT64", [1], _int64(3))
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(request, metadata=tuple(APP.items()), timeout=30)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND and "999999" in raised.value.details()


def test_plain_http_on_the_grpc_port_fails_fast_and_grpc_goes_on(grpc_address, client):
    """An HTTP/1.1 request gets a protocol error at once (no answer, no hang);
    the gRPC server serves on."""
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"http://{grpc_address}/v2/health/live", timeout=10)
    assert client.is_server_live(headers=APP)


def test_the_demos_grpc_example_works_as_printed(grpc_address):
    from local_stack.demo import oip_grpc_example
    from local_stack.paths import PROJECT_ROOT

    run = subprocess.run(shlex.split(oip_grpc_example(grpc_address)), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert len(json.loads(run.stdout.strip().splitlines()[-1])) == 3
