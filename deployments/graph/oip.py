"""The Open Inference Protocol (KServe v2, REST) for a graph: the same graph
that answers its JSON route, to the clients this field already has
(`tritonclient.http`, KServe's and Seldon's clients), with no code of theirs
changed.

    GET  <route prefix>/v2/health/live
    GET  <route prefix>/v2/health/ready            the graph's readiness checks
    GET  <route prefix>/v2/models/<graph>          metadata: input and output tensors
    GET  <route prefix>/v2/models/<graph>/ready
    POST <route prefix>/v2/models/<graph>/infer

    client = tritonclient.http.InferenceServerClient("127.0.0.1:8000/recommend")

The mapping, from the graph's `request` and `output`:
- each request field is an input tensor of its name: `int` INT64, `float`
  FP32 (FP64 accepted), `bool` BOOL, `str` BYTES; a scalar has shape [1], a
  list shape [n] (either may carry a leading batch dimension of 1, as
  clients of batching models send); a field with a default may be left out;
- each output field is an output tensor: integers INT64, other numbers
  FP64, booleans BOOL, strings BYTES, shape [1] for one value and [n] for a
  list of them; anything structured (the ranked items, the model, a null) is
  BYTES holding its JSON text, one element per list item;
- the request's `id` is the answer's `id`; the routes a split or switch took
  and a soft node's reason are the answer's `parameters` (`routes`,
  `errors`, as JSON text), when there are any.

Tensor data arrives as JSON (`data`, flat or nested) or in the binary
extension (`Inference-Header-Content-Length`, each input's
`parameters.binary_data_size`), which `tritonclient.http` uses by default.
Answers are JSON, which every client reads whatever it asked for.

A bad tensor is a 400 `{"error": "..."}` naming it (the protocol's error
format); the graph's own failures keep their status (404 unknown entities,
503 a backend down) with the same body shape.
"""
from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np

from deployments.errors import GraphError, InvalidInput

BINARY_HEADER = "inference-header-content-length"
PLATFORM = "serve-graphs"

_INPUT_TYPES = {"int": "INT64", "float": "FP32", "bool": "BOOL", "str": "BYTES"}
_ACCEPTED = {"INT64": {"INT64"}, "FP32": {"FP32", "FP64"}, "BOOL": {"BOOL"}, "BYTES": {"BYTES"}}
_NUMPY = {"INT64": "<i8", "FP32": "<f4", "FP64": "<f8", "BOOL": "?"}


class ProtocolError(GraphError):
    """400 in the protocol's own format: `{"error": "<what, naming the tensor>"}`."""

    status = 400
    code = "invalid_request"

    def body(self) -> dict[str, Any]:
        return {"error": self.message}


def protocol_body(error: GraphError) -> dict[str, Any]:
    """Any GraphError as the protocol's error body (its status is kept)."""
    return {"error": error.message}


def _element_type(field_type: str) -> str:
    return field_type[5:-1] if field_type.startswith("list[") else field_type


def tensor_metadata(fields: dict[str, Any]) -> list[dict[str, Any]]:
    """Input tensors of a graph's `request` (name, datatype, shape)."""
    return [
        {"name": name, "datatype": _INPUT_TYPES[_element_type(spec.type)], "shape": [-1] if spec.type.startswith("list[") else [1]}
        for name, spec in fields.items()
    ]


def model_metadata(graph: Any) -> dict[str, Any]:
    """`GET /v2/models/<graph>`: the request fields as inputs, the output
    fields as outputs (typed where they repeat a request field, else BYTES:
    JSON text, see the module docstring)."""
    inputs = tensor_metadata(graph.request)
    by_name = {tensor["name"]: tensor for tensor in inputs}
    outputs = []
    for name, reference in graph.output.items():
        head, _, rest = reference.partition(".")
        if head == "request" and rest in by_name:
            outputs.append({**by_name[rest], "name": name})
        else:
            outputs.append({"name": name, "datatype": "BYTES", "shape": [-1]})
    return {"name": graph.name, "versions": [], "platform": PLATFORM, "inputs": inputs, "outputs": outputs}


# The infer request's JSON schema (the protocol's `$inference_request`), for
# /openapi.json: clients, docs pages and schema-driven fuzzers see its shape.
INFER_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "inputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype"],
                "properties": {
                    "name": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "datatype": {"type": "string", "enum": ["BOOL", "INT64", "FP32", "FP64", "BYTES"]},
                    "parameters": {"type": "object"},
                    "data": {"type": "array"},
                },
            },
        },
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}},
    },
}


# ------------------------------------------------------------ requests


def read_request(raw: bytes, headers: dict[str, str]) -> tuple[dict[str, Any], bytes]:
    """The request's JSON header and what follows it (the binary tensors)."""
    length = headers.get(BINARY_HEADER)
    if length is not None:
        try:
            size = int(length)
        except ValueError:
            raise ProtocolError(f"Inference-Header-Content-Length is not a number: {length!r}") from None
        if not 0 < size <= len(raw):
            raise ProtocolError(f"Inference-Header-Content-Length {size} is not within the body's {len(raw)} bytes")
        head, rest = raw[:size], raw[size:]
    else:
        head, rest = raw, b""
    try:
        request = json.loads(head)
    except ValueError:
        raise ProtocolError("the request is not valid JSON") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise ProtocolError("the request needs an `inputs` list")
    return request, rest


def body_from_tensors(request: dict[str, Any], binary: bytes, fields: dict[str, Any]) -> dict[str, Any]:
    """The graph's JSON body from the request's input tensors, each checked
    against its field: name, datatype, shape against data."""
    body: dict[str, Any] = {}
    offset = 0
    for index, tensor in enumerate(request["inputs"]):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise ProtocolError(f"inputs[{index}] needs a `name`")
        name = tensor["name"]
        if name not in fields:
            raise ProtocolError(f"input {name!r}: not an input of this graph (its inputs: {', '.join(fields)})")
        if name in body:
            raise ProtocolError(f"input {name!r}: given twice")
        spec = fields[name]
        expected = _INPUT_TYPES[_element_type(spec.type)]
        datatype = tensor.get("datatype")
        if datatype not in _ACCEPTED[expected]:
            raise ProtocolError(f"input {name!r}: datatype {datatype!r}, expected {expected}")
        shape = _shape(name, tensor.get("shape"))
        size = math.prod(shape)
        parameters = tensor.get("parameters") or {}
        if "binary_data_size" in parameters:
            length = parameters["binary_data_size"]
            if not isinstance(length, int) or length < 0 or offset + length > len(binary):
                raise ProtocolError(f"input {name!r}: binary_data_size {length!r} is past the end of the request")
            values = _from_binary(name, datatype, binary[offset:offset + length])
            offset += length
        elif "data" in tensor:
            values = _flatten(tensor["data"])
        else:
            raise ProtocolError(f"input {name!r}: no `data` and no binary_data_size")
        if len(values) != size:
            raise ProtocolError(f"input {name!r}: shape {shape} holds {size} elements, the data has {len(values)}")
        _check_elements(name, datatype, values)
        body[name] = _field_value(name, spec, shape, values)
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data belong to no input")
    missing = [name for name, spec in fields.items() if spec.is_required and name not in body]
    if missing:
        raise ProtocolError(f"input {missing[0]!r}: missing (required inputs: {', '.join(missing)})")
    return body


def _shape(name: str, shape: Any) -> list[int]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"input {name!r}: shape {shape!r} is not a list of non-negative integers")
    return shape


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat


def _from_binary(name: str, datatype: str, raw: bytes) -> list[Any]:
    if datatype == "BYTES":  # each element: a 4-byte little-endian length, then the bytes
        values, at = [], 0
        while at < len(raw):
            if at + 4 > len(raw):
                raise ProtocolError(f"input {name!r}: truncated BYTES element")
            (length,) = struct.unpack_from("<I", raw, at)
            if at + 4 + length > len(raw):
                raise ProtocolError(f"input {name!r}: truncated BYTES element")
            values.append(raw[at + 4:at + 4 + length])
            at += 4 + length
        try:
            return [value.decode() for value in values]
        except UnicodeDecodeError:
            raise ProtocolError(f"input {name!r}: BYTES elements must be UTF-8 text") from None
    dtype = np.dtype(_NUMPY[datatype])
    if len(raw) % dtype.itemsize:
        raise ProtocolError(f"input {name!r}: {len(raw)} bytes is not a whole number of {datatype} elements")
    return np.frombuffer(raw, dtype=dtype).tolist()


def _check_elements(name: str, datatype: str, values: list[Any]) -> None:
    if datatype == "INT64":
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    elif datatype in ("FP32", "FP64"):
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    elif datatype == "BOOL":
        ok = all(isinstance(v, bool) for v in values)
    else:
        ok = all(isinstance(v, str) for v in values)
    if not ok:
        raise ProtocolError(f"input {name!r}: its data is not all {datatype}")


def _field_value(name: str, spec: Any, shape: list[int], values: list[Any]) -> Any:
    """Scalars: shape [1] (or [1, 1]); lists: [n] (or [1, n])."""
    dims = shape[1:] if len(shape) == 2 and shape[0] == 1 else shape
    if spec.type.startswith("list["):
        if len(dims) != 1:
            raise ProtocolError(f"input {name!r}: shape {shape}, expected [n] (or [1, n])")
        return values
    if dims != [1]:
        raise ProtocolError(f"input {name!r}: shape {shape}, expected [1] for one value")
    return values[0]


# ------------------------------------------------------------ answers


def requested_outputs(request: dict[str, Any], output_names: list[str]) -> list[str]:
    """The outputs the request names (all of the graph's when it names none)."""
    asked = request.get("outputs")
    if not asked:
        return output_names
    if not isinstance(asked, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in asked):
        raise ProtocolError("`outputs` must be a list of {\"name\": ...}")
    names = [o["name"] for o in asked]
    unknown = [n for n in names if n not in output_names]
    if unknown:
        raise ProtocolError(f"output {unknown[0]!r}: not an output of this graph (its outputs: {', '.join(output_names)})")
    return names


def output_tensor(name: str, value: Any) -> dict[str, Any]:
    values = value if isinstance(value, list) else [value]
    shape = [len(values)]
    if values and all(isinstance(v, bool) for v in values):
        return {"name": name, "datatype": "BOOL", "shape": shape, "data": values}
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return {"name": name, "datatype": "INT64", "shape": shape, "data": values}
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return {"name": name, "datatype": "FP64", "shape": shape, "data": values}
    text = [v if isinstance(v, str) else json.dumps(v) for v in values]
    return {"name": name, "datatype": "BYTES", "shape": shape, "data": text}


def infer_response(graph: str, request: dict[str, Any], answer: Any, names: list[str]) -> dict[str, Any]:
    response: dict[str, Any] = {
        "model_name": graph,
        "model_version": "",
        "outputs": [output_tensor(name, answer.output[name]) for name in names],
    }
    if isinstance(request.get("id"), str):
        response["id"] = request["id"]
    parameters = {key: json.dumps(value) for key, value in (("routes", answer.routes), ("errors", answer.errors)) if value}
    if parameters:
        response["parameters"] = parameters
    return response


class UnknownModel(GraphError):
    status = 404
    code = "not_found"


def check_model(name: str, graph: str) -> None:
    if name != graph:
        raise UnknownModel(f"unknown model {name!r}: this graph is {graph!r}")


def server_metadata() -> dict[str, Any]:
    """`GET /v2`."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("serve-graphs")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree without install
        ours = "unknown"
    return {"name": PLATFORM, "version": ours, "extensions": ["binary_tensor_data"]}


async def infer(executor: Any, model: str, raw: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """One `POST /v2/models/<model>/infer`: the tensors read and checked, the
    graph run on the body they make, its answer as output tensors. Raises a
    GraphError (ProtocolError for a bad request) carrying the status."""
    request, binary = read_request(raw, headers)
    return await infer_request(executor, model, request, binary)


async def infer_request(executor: Any, model: str, request: dict[str, Any], binary: bytes) -> dict[str, Any]:
    """An infer request already read (REST's JSON and binary part, or a gRPC
    message turned into them): checked, run, answered."""
    check_model(model, executor.spec.name)
    names = requested_outputs(request, list(executor.spec.output))
    body = body_from_tensors(request, binary, executor.spec.request)
    try:
        answer = await executor.run(body)
    except InvalidInput as error:  # a constraint of the field (length, uniqueness, bounds): still the caller's tensor
        raise ProtocolError(error.message) from None
    return infer_response(executor.spec.name, request, answer, names)


def headers_of(scope_headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """An ASGI scope's headers by lower-case name."""
    return {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope_headers}
