"""The `payload_log:` of a graph app, typed and checked where the config is read.

    args:
      payload_log:
        sample_ratio: 1.0                 # share of requests logged
        nodes: [ranker]                   # node outputs logged too (besides request and response)
        redact: [request.user_id]         # values replaced by "[redacted]"
        queue_size: 10000                 # records waiting for the writer; beyond it, dropped and counted
        sink: {kind: file, directory: .local/payloads}          # the local default
        # sink: {kind: redis, url_env: PAYLOAD_LOG_REDIS_URL, maxlen: 100000}   # Redis Streams, bounded
        # sink: {kind: http, url: http://receiver:8080/}        # any CloudEvents HTTP receiver
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

REDACTED = "[redacted]"
REDACT_ROOTS = ("request", "response", "nodes")


class FileSink(BaseModel):
    """JSON lines, one CloudEvent each, in `<directory>/<graph>/<writer>.jsonl`
    (one file per replica or process, so that writers never share a file),
    rotated at `max_bytes` with `backups` older files kept: at most
    (backups + 1) x max_bytes per writer."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["file"] = "file"
    directory: str = Field(".local/payloads", min_length=1, description="Root folder; relative to the working directory.")
    max_bytes: int = Field(10 * 2**20, ge=4096, description="Size at which a file is rotated.")
    backups: int = Field(3, ge=0, le=100, description="Rotated files kept per writer.")


class RedisSink(BaseModel):
    """XADD to a Redis stream (`payloads:<graph>` by default), trimmed to
    `maxlen` entries as it grows (approximately, Redis's cheap trim, unless
    `exact_trim`). The URL comes from the config or, in clusters, from an
    environment variable that a Kubernetes Secret fills."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["redis"]
    url: Optional[str] = Field(None, description="redis://host:port/db; or url_env.")
    url_env: Optional[str] = Field(None, min_length=1, description="Environment variable holding the URL.")
    stream: Optional[str] = Field(None, min_length=1, description="Stream key; default payloads:<graph>.")
    maxlen: int = Field(100_000, ge=1, description="Entries kept in the stream.")
    exact_trim: bool = Field(False, description="Trim to exactly maxlen (costlier) instead of about it.")
    timeout_s: float = Field(1.0, gt=0, le=30, description="Bound on one write.")

    @model_validator(mode="after")
    def _one_url(self):
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give url or url_env, exactly one")
        return self


class HttpSink(BaseModel):
    """POST each record to a CloudEvents HTTP receiver, in the binary content
    mode KServe's logger uses (`ce-*` headers, the record as the body)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["http"]
    url: str = Field(min_length=1, description="The receiver's URL.")
    timeout_s: float = Field(2.0, gt=0, le=30, description="Bound on one POST.")


Sink = Annotated[Union[FileSink, RedisSink, HttpSink], Field(discriminator="kind")]


class PayloadLogConfig(BaseModel):
    """What a graph logs of its requests, how often, and where to."""

    model_config = ConfigDict(extra="forbid")

    sample_ratio: float = Field(1.0, ge=0, le=1, description="Share of requests logged (a random draw per request).")
    nodes: list[str] = Field(default_factory=list, description="Nodes whose outputs are logged too.")
    redact: list[str] = Field(
        default_factory=list,
        description="Values replaced by \"[redacted]\": request.<field>, response.<field> or nodes.<node>, "
        "optionally deeper (response.items).",
    )
    queue_size: int = Field(10_000, ge=1, le=1_000_000, description="Records waiting for the writer; more are dropped and counted.")
    sink: Sink = Field(default_factory=FileSink, description="Where records go: file (default), redis or http.")

    def problems(self, request_fields: set[str], output_fields: set[str], node_names: set[str]) -> list[tuple[str, str]]:
        """(path under payload_log, reason) for what the graph does not have."""
        found = []
        for index, node in enumerate(self.nodes):
            if node not in node_names:
                found.append((f"nodes[{index}]", f"no node {node!r} in the graph (it has {sorted(node_names)})"))
        known = {"request": request_fields, "response": output_fields, "nodes": set(self.nodes)}
        for index, path in enumerate(self.redact):
            root, _, rest = path.partition(".")
            field = rest.split(".")[0]
            if root not in REDACT_ROOTS or not field:
                found.append((f"redact[{index}]", f"{path!r}: expected request.<field>, response.<field> or nodes.<node>"))
            elif field not in known[root]:
                what = "logged node" if root == "nodes" else f"{root} field"
                found.append((f"redact[{index}]", f"{path!r}: no {what} {field!r} (there are {sorted(known[root])})"))
        return found
