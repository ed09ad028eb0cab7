"""The Open Inference Protocol over a graph (deployments/graph/oip.py), run
in-process: request fields as input tensors, output fields as output
tensors, bodies encoded by the official `tritonclient.http` (its JSON and its
binary tensor extension), and every bad tensor a 400 naming it."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import tritonclient.http as triton

from apps.graph import in_process
from deployments.errors import GraphError
from deployments.graph import oip
from tests.graph_callables import graph_args, py, sequence

REQUEST = {
    "user_id": {"type": "int"},
    "item_ids": {"type": "list[int]", "min_length": 1, "unique": True},
    "weight": {"type": "float", "default": 1.0},
    "explain": {"type": "bool", "default": False},
    "note": {"type": "str", "default": "none"},
}


@pytest.fixture(scope="module")
def executor():
    nodes = {
        "total": py("add", a="request.user_id", b="request.user_id"),
        "items": py("echo", value="request.item_ids"),
        "scored": py("scores", n="request.user_id"),
    }
    output = {"user_id": "request.user_id", "doubled": "total", "items": "items", "model": "scored.model",
              "scores": "scored.scores", "note": "request.note", "explain": "request.explain"}
    return in_process(graph_args(nodes, sequence("total", "items", "scored"), output, request=REQUEST))


def tritonclient_body(inputs: list[triton.InferInput], outputs=None) -> tuple[bytes, dict[str, str]]:
    """The exact bytes and headers `tritonclient.http` sends for these inputs."""
    body, header_length = triton.InferenceServerClient.generate_request_body(inputs, outputs=outputs, request_id="req-7")
    headers = {oip.BINARY_HEADER: str(header_length)} if header_length is not None else {}
    return body, headers


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> triton.InferInput:
    given = triton.InferInput(name, list(array.shape), datatype)
    given.set_data_from_numpy(array, binary_data=binary)
    return given


def infer(executor, raw: bytes, headers: dict[str, str] | None = None, model: str = "test") -> dict:
    return asyncio.run(oip.infer(executor, model, raw, headers or {}))


def outputs_of(response: dict) -> dict[str, dict]:
    return {o["name"]: o for o in response["outputs"]}


@pytest.mark.parametrize("binary", [True, False], ids=["binary-extension", "json"])
def test_tritonclient_bodies_run_the_graph_and_the_answer_is_typed_tensors(executor, binary):
    body, headers = tritonclient_body([
        tensor("user_id", np.array([3], dtype=np.int64), "INT64", binary),
        tensor("item_ids", np.array([[4, 5, 6]], dtype=np.int64), "INT64", binary),  # a leading batch dimension of 1
        tensor("note", np.array(["hi"], dtype=np.object_), "BYTES", binary),
    ])
    response = infer(executor, body, headers)

    assert response["model_name"] == "test" and response["id"] == "req-7"
    out = outputs_of(response)
    assert out["user_id"] == {"name": "user_id", "datatype": "INT64", "shape": [1], "data": [3]}
    assert out["doubled"]["data"] == [6]
    assert out["items"] == {"name": "items", "datatype": "INT64", "shape": [3], "data": [4, 5, 6]}
    assert out["scores"]["datatype"] == "FP64" and out["scores"]["data"] == pytest.approx([0.0, 0.1, 0.2])
    assert out["note"] == {"name": "note", "datatype": "BYTES", "shape": [1], "data": ["hi"]}
    assert out["explain"] == {"name": "explain", "datatype": "BOOL", "shape": [1], "data": [False]}  # the default
    assert json.loads(out["model"]["data"][0])["name"] == "fake+0"  # structured values: their JSON text


def test_the_answer_is_the_json_routes_answer(executor):
    body, headers = tritonclient_body([tensor("user_id", np.array([2], dtype=np.int64), "INT64"),
                                       tensor("item_ids", np.array([9, 8], dtype=np.int64), "INT64")])
    v2 = outputs_of(infer(executor, body, headers))
    plain = asyncio.run(executor.run({"user_id": 2, "item_ids": [9, 8]})).output
    assert {name: t["data"] for name, t in v2.items()} == {
        name: ([json.dumps(v)] if isinstance(v, dict) else v if isinstance(v, list) else [v]) for name, v in plain.items()
    }


def test_only_the_outputs_asked_for_are_returned(executor):
    body, headers = tritonclient_body([tensor("user_id", np.array([1], dtype=np.int64), "INT64"),
                                       tensor("item_ids", np.array([1], dtype=np.int64), "INT64")],
                                      outputs=[triton.InferRequestedOutput("items", binary_data=False)])
    assert [o["name"] for o in infer(executor, body, headers)["outputs"]] == ["items"]


def test_metadata_lists_the_request_fields_and_the_outputs(executor):
    metadata = oip.model_metadata(executor.spec)
    assert metadata["name"] == "test" and metadata["platform"] == "serve-graphs"
    assert metadata["inputs"] == [
        {"name": "user_id", "datatype": "INT64", "shape": [1]},
        {"name": "item_ids", "datatype": "INT64", "shape": [-1]},
        {"name": "weight", "datatype": "FP32", "shape": [1]},
        {"name": "explain", "datatype": "BOOL", "shape": [1]},
        {"name": "note", "datatype": "BYTES", "shape": [1]},
    ]
    outputs = {o["name"]: o for o in metadata["outputs"]}
    assert outputs["user_id"]["datatype"] == "INT64" and outputs["items"] == {"name": "items", "datatype": "BYTES", "shape": [-1]}


def v2(*inputs: dict, **extra) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


USER = {"name": "user_id", "datatype": "INT64", "shape": [1], "data": [1]}
ITEMS = {"name": "item_ids", "datatype": "INT64", "shape": [2], "data": [1, 2]}


@pytest.mark.parametrize(
    "raw, headers, named",
    [
        (v2(ITEMS), {}, "input 'user_id': missing"),
        (v2(USER, ITEMS, {"name": "colour", "datatype": "BYTES", "shape": [1], "data": ["red"]}), {}, "input 'colour': not an input"),
        (v2({**USER, "datatype": "FP32"}, ITEMS), {}, "input 'user_id': datatype 'FP32', expected INT64"),
        (v2(USER, {**ITEMS, "shape": [3]}), {}, "input 'item_ids': shape [3] holds 3 elements, the data has 2"),
        (v2(USER, {**ITEMS, "datatype": "BYTES", "data": ["1", "2"]}), {}, "input 'item_ids': datatype 'BYTES', expected INT64"),
        (v2(USER, {**ITEMS, "data": [1, "2"]}), {}, "input 'item_ids': its data is not all INT64"),
        (v2(USER, {**ITEMS, "shape": [0], "data": []}), {}, "item_ids"),  # empty: the field's min_length
        (v2(USER, {**ITEMS, "data": [1, 1]}), {}, "item_ids: duplicate values [1]"),
        (v2({**USER, "shape": [2], "data": [1, 2]}, ITEMS), {}, "input 'user_id': shape [2], expected [1] for one value"),
        (v2(USER, ITEMS, USER), {}, "input 'user_id': given twice"),
        (v2(USER, {**ITEMS, "shape": [-1]}), {}, "input 'item_ids': shape [-1] is not a list of non-negative integers"),
        (v2(USER, {"name": "item_ids", "datatype": "INT64", "shape": [2]}), {}, "input 'item_ids': no `data`"),
        (v2(USER, ITEMS, outputs=[{"name": "colour"}]), {}, "output 'colour': not an output"),
        (b"not json", {}, "not valid JSON"),
        (b'{"no": "inputs"}', {}, "needs an `inputs` list"),
        (v2(USER, {**ITEMS, "parameters": {"binary_data_size": 16}}), {oip.BINARY_HEADER: "999"}, "Inference-Header-Content-Length 999"),
    ],
    ids=["missing", "unknown", "wrong-datatype", "shape-vs-data", "bytes-for-int64", "mixed-data", "empty", "duplicates",
         "scalar-shape", "twice", "bad-shape", "no-data", "unknown-output", "not-json", "no-inputs", "header-length"],
)
def test_a_bad_tensor_is_a_400_in_the_protocols_format_naming_it(executor, raw, headers, named):
    with pytest.raises(GraphError) as caught:
        infer(executor, raw, headers)
    assert caught.value.status == 400
    assert named in oip.protocol_body(caught.value)["error"]


def test_binary_data_that_does_not_add_up_is_refused(executor):
    body, headers = tritonclient_body([tensor("user_id", np.array([1], dtype=np.int64), "INT64"),
                                       tensor("item_ids", np.array([1, 2], dtype=np.int64), "INT64")])
    for broken, reason in ((body[:-4], "past the end"), (body + b"\0" * 8, "belong to no input")):
        with pytest.raises(GraphError, match=reason) as caught:
            infer(executor, broken, headers)
        assert caught.value.status == 400


def test_an_unknown_model_is_a_404_naming_the_graph(executor):
    with pytest.raises(GraphError, match="unknown model 'ranker': this graph is 'test'") as caught:
        infer(executor, v2(USER, ITEMS), model="ranker")
    assert caught.value.status == 404 and oip.protocol_body(caught.value) == {"error": "unknown model 'ranker': this graph is 'test'"}


def test_the_graphs_own_errors_keep_their_status():
    """An unknown user is the graph's 404, not a protocol error."""
    executor = in_process(graph_args({"lookup": py("unknown_user", user_id="request.x")}, sequence("lookup"), {"y": "lookup"}))
    with pytest.raises(GraphError) as caught:
        infer(executor, v2({"name": "x", "datatype": "INT64", "shape": [1], "data": [5]}))
    assert caught.value.status == 404 and "user_id [5]" in oip.protocol_body(caught.value)["error"]


# ---------------------------------------------------------------- over gRPC (deployments/graph/oip_grpc.py)


def grpc_request(values: dict, raw: bool = True):
    """A ModelInferRequest with raw contents (as tritonclient.grpc sends, BYTES
    serialized by tritonclient's own helper) or with typed `contents`."""
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import serialize_byte_tensor

    message = service_pb2.ModelInferRequest(model_name="test", id="r-1")
    for name, (datatype, array) in values.items():
        tensor = message.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if raw:
            message.raw_input_contents.append(serialize_byte_tensor(array).item() if datatype == "BYTES" else array.tobytes())
        else:
            field = {"INT64": "int64_contents", "FP32": "fp32_contents", "BOOL": "bool_contents", "BYTES": "bytes_contents"}[datatype]
            getattr(tensor.contents, field).extend([v.encode() if isinstance(v, str) else v for v in array.reshape(-1).tolist()])
    return message


@pytest.mark.parametrize("raw", [True, False], ids=["raw contents", "typed contents"])
def test_a_grpc_request_runs_the_graph_as_the_rest_one_does(executor, raw):
    from deployments.graph import oip_grpc

    values = {"user_id": ("INT64", np.array([3], dtype=np.int64)), "item_ids": ("INT64", np.array([5, 6], dtype=np.int64)),
              "weight": ("FP32", np.array([0.5], dtype=np.float32)), "explain": ("BOOL", np.array([True])),
              "note": ("BYTES", np.array(["héllo"], dtype=object))}
    body, binary = oip_grpc.request_from_message(grpc_request(values, raw))
    answer = asyncio.run(oip.infer_request(executor, "test", body, binary))
    assert answer["id"] == "r-1"
    outputs = {o["name"]: o["data"] for o in answer["outputs"]}
    assert outputs["user_id"] == [3] and outputs["doubled"] == [6] and outputs["items"] == [5, 6]
    assert outputs["note"] == ["héllo"] and outputs["explain"] == [True]


def test_every_output_datatype_reads_back_with_tritonclient_grpc():
    import tritonclient.grpc as triton_grpc

    from deployments.graph import oip_grpc

    outputs = [oip.output_tensor("n", 3), oip.output_tensor("f", [0.5, 1.5]), oip.output_tensor("b", [True, False]),
               oip.output_tensor("s", ["a", "bé"]), oip.output_tensor("j", [{"x": 1}, None])]
    message = oip_grpc.response_message({"model_name": "g", "model_version": "", "id": "r-1", "outputs": outputs,
                                         "parameters": {"routes": json.dumps({"ab": "a"})}})
    result = triton_grpc.InferResult(message)
    assert result.as_numpy("n").tolist() == [3] and result.as_numpy("f").tolist() == [0.5, 1.5]
    assert result.as_numpy("b").tolist() == [True, False]
    assert [v.decode() for v in result.as_numpy("s")] == ["a", "bé"]
    assert [json.loads(v) for v in result.as_numpy("j")] == [{"x": 1}, None]
    assert result.get_response().id == "r-1" and json.loads(message.parameters["routes"].string_param) == {"ab": "a"}


def test_raw_contents_that_do_not_match_the_inputs_are_refused():
    from tritonclient.grpc import service_pb2

    from deployments.graph import oip_grpc

    message = service_pb2.ModelInferRequest(model_name="g")
    message.inputs.add(name="user_id", datatype="INT64", shape=[1])
    message.inputs.add(name="item_ids", datatype="INT64", shape=[1])
    message.raw_input_contents.append(np.array([1], "<i8").tobytes())
    with pytest.raises(GraphError, match="raw_input_contents holds 1 tensors for 2 inputs") as raised:
        oip_grpc.request_from_message(message)
    assert oip_grpc.status_code(raised.value).name == "INVALID_ARGUMENT"
