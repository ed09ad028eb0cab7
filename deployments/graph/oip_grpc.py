"""The Open Inference Protocol over gRPC for a graph, through Ray Serve's own
gRPC proxy: `GRPCInferenceService` as KServe v2 and Triton define it, so
`tritonclient.grpc` calls a graph unchanged.

    grpc_options:                       # the Serve config
      port: 9000
      grpc_servicer_functions: [tritonclient.grpc.service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server]

    client = tritonclient.grpc.InferenceServerClient("127.0.0.1:9000")
    client.infer("recommend", inputs, headers={"application": "recommend"})

Serve's proxy routes a call by its `application` metadata (needed once a
config holds more than one app) and calls the ingress's method of the RPC's
name (`ModelInfer`, ...) with the request message; the ingress answers with
the response message (deployments/graph/serving.py).

A request's tensors, whether in `raw_input_contents` (what tritonclient
sends) or in typed `contents`, become the same request the REST route reads
(deployments/graph/oip.py), so both protocols check tensors, map fields and
name a bad tensor the same way. Outputs go back as `raw_output_contents`.
A GraphError's HTTP status becomes the gRPC status code a client expects
(400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 404 NOT_FOUND, 503 UNAVAILABLE...).
"""
from __future__ import annotations

import struct
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

from deployments.errors import GraphError
from deployments.graph.oip import ProtocolError

STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

_CONTENTS = {"INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BOOL": "bool_contents",
             "BYTES": "bytes_contents"}
_NUMPY = {"INT64": "<i8", "FP64": "<f8", "BOOL": "?"}


def status_code(error: GraphError) -> grpc.StatusCode:
    return STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL)


def request_from_message(message: service_pb2.ModelInferRequest) -> tuple[dict[str, Any], bytes]:
    """The REST route's request (its JSON part and its binary tensors) from
    a ModelInferRequest: raw contents become `binary_data_size` inputs, typed
    contents `data`."""
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise ProtocolError(f"raw_input_contents holds {len(raw)} tensors for {len(message.inputs)} inputs")
    inputs, binary = [], b""
    for index, tensor in enumerate(message.inputs):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if raw:
            entry["parameters"] = {"binary_data_size": len(raw[index])}
            binary += raw[index]
        else:
            entry["data"] = _typed_contents(tensor)
        inputs.append(entry)
    request: dict[str, Any] = {"inputs": inputs, "outputs": [{"name": output.name} for output in message.outputs]}
    if message.id:
        request["id"] = message.id
    return request, binary


def _typed_contents(tensor: Any) -> list[Any]:
    field = _CONTENTS.get(tensor.datatype)
    if field is None:
        return []  # the datatype check names the tensor and what it expected
    values = list(getattr(tensor.contents, field))
    if tensor.datatype == "BYTES":
        try:
            return [value.decode() for value in values]
        except UnicodeDecodeError:
            raise ProtocolError(f"input {tensor.name!r}: BYTES elements must be UTF-8 text") from None
    return values


def response_message(response: dict[str, Any]) -> service_pb2.ModelInferResponse:
    """The REST route's answer (oip.infer_response) as a ModelInferResponse."""
    message = service_pb2.ModelInferResponse(model_name=response["model_name"], model_version=response["model_version"],
                                             id=response.get("id", ""))
    for tensor in response["outputs"]:
        message.outputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        message.raw_output_contents.append(_raw(tensor["datatype"], tensor["data"]))
    for key, value in response.get("parameters", {}).items():
        message.parameters[key].string_param = value
    return message


def _raw(datatype: str, data: list[Any]) -> bytes:
    if datatype == "BYTES":  # each element: a 4-byte little-endian length, then its bytes
        encoded = [value.encode() for value in data]
        return b"".join(struct.pack("<I", len(value)) + value for value in encoded)
    return np.asarray(data, dtype=_NUMPY[datatype]).tobytes()


def metadata_message(metadata: dict[str, Any]) -> service_pb2.ModelMetadataResponse:
    """oip.model_metadata as a ModelMetadataResponse."""
    def tensors(entries: list[dict[str, Any]]) -> list[Any]:
        return [service_pb2.ModelMetadataResponse.TensorMetadata(**entry) for entry in entries]

    return service_pb2.ModelMetadataResponse(name=metadata["name"], versions=metadata["versions"], platform=metadata["platform"],
                                             inputs=tensors(metadata["inputs"]), outputs=tensors(metadata["outputs"]))


def metadata_pairs(grpc_context: Any) -> list[tuple[bytes, bytes]]:
    """A call's metadata as ASGI-style header pairs (what the API-key check reads)."""
    return [(key.lower().encode("latin-1"), value.encode("latin-1") if isinstance(value, str) else value)
            for key, value in grpc_context.invocation_metadata()]


def fail(grpc_context: Any, error: GraphError, empty: Any) -> Any:
    """The call's status from the error (its message as the details), and an empty answer."""
    grpc_context.set_code(status_code(error))
    grpc_context.set_details(error.message)
    return empty
