"""Triton model node: KServe v2 inference through `tritonclient`'s asyncio
clients (gRPC by default, HTTP selectable). The model version is resolved
from an MLflow alias at start-up; one client (one channel / connection pool)
is reused for every call; every call is bounded by a timeout."""
from __future__ import annotations

import asyncio
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deployments.errors import BackendTimeout, BackendUnavailable
from deployments.registry import ModelRef, resolve_alias


class TritonModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field("127.0.0.1:8101", description="host:port of Triton's gRPC (or HTTP) endpoint.")
    protocol: Literal["grpc", "http"] = "grpc"
    model: str = Field("ranker", min_length=1, description="Registered model name, also the Triton model name.")
    alias: str = Field("champion", min_length=1, description="MLflow alias that selects the version.")
    registry_uri: str = Field("sqlite:///.local/mlflow/mlflow.db", description="MLflow registry URI.")
    input_name: str = "features"
    output_name: str = "score"
    timeout_s: float = Field(1.0, gt=0, le=60, description="Bound on one inference call.")
    reconnect_backoff_max_ms: int = Field(
        1000, ge=100, description="gRPC reconnect backoff cap: how soon a restarted Triton is used again."
    )


class TritonModel:
    backend = "triton"

    def __init__(self, config: TritonModelConfig):
        self.config = config
        self.ref: ModelRef = resolve_alias(config.registry_uri, config.model, config.alias)
        self._client = None

    @property
    def client(self):
        """Created on first use, inside the replica's running event loop."""
        if self._client is None:
            if self.config.protocol == "grpc":
                from tritonclient.grpc import aio as triton

                self._client = triton.InferenceServerClient(url=self.config.url, channel_args=self._channel_args())
            else:
                from tritonclient.http import aio as triton

                self._client = triton.InferenceServerClient(url=self.config.url, conn_timeout=self.config.timeout_s)
        return self._client

    def _channel_args(self) -> list[tuple[str, int]]:
        unlimited = 2**31 - 1
        return [
            ("grpc.max_send_message_length", unlimited),
            ("grpc.max_receive_message_length", unlimited),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", self.config.reconnect_backoff_max_ms),
        ]

    def _module(self):
        if self.config.protocol == "grpc":
            import tritonclient.grpc as triton
        else:
            import tritonclient.http as triton
        return triton

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        triton = self._module()
        inputs = triton.InferInput(self.config.input_name, list(batch.shape), "FP32")
        inputs.set_data_from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        outputs = [triton.InferRequestedOutput(self.config.output_name)]
        kwargs = {"client_timeout": self.config.timeout_s} if self.config.protocol == "grpc" else {}
        try:
            result = await asyncio.wait_for(
                self.client.infer(self.config.model, [inputs], model_version=self.ref.version, outputs=outputs, **kwargs),
                self.config.timeout_s,
            )
        except asyncio.TimeoutError:
            raise BackendTimeout(self.backend, self.config.timeout_s) from None
        except Exception as error:
            if "DEADLINE_EXCEEDED" in str(error) or "Deadline Exceeded" in str(error):
                raise BackendTimeout(self.backend, self.config.timeout_s) from None
            raise BackendUnavailable(self.backend, _short(error)) from error
        return result.as_numpy(self.config.output_name).reshape(len(batch))

    async def ready(self) -> tuple[bool, str]:
        try:
            ok = await asyncio.wait_for(
                self.client.is_model_ready(self.config.model, self.ref.version), self.config.timeout_s
            )
        except Exception as error:
            return False, f"{self.config.url}: {_short(error) or type(error).__name__}"
        detail = f"{self.ref.name} version {self.ref.version} (@{self.ref.alias})"
        return bool(ok), detail if ok else f"{detail} not ready on {self.config.url}"

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__
