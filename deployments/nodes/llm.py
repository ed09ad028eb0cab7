"""The `llm` node kind: one chat completion of a prompt rendered from
`prompt_template` (str.format; every template field is an input), in one of
two modes. Output: {text, model}.

- `embedded`: a vLLM engine in a Serve deployment of the graph's own
  application (`ray.serve.llm`'s LLMServer; model from the registry, engine
  settings in config), called through a DeploymentHandle: no HTTP, no JSON.
- `remote`: an OpenAI-compatible server given by URL (vLLM's own server
  running as its own service, or this platform's chat app), through the
  official `openai` asyncio client: one client per node (pooled, reused
  connections), no retries (the caller decides).

Both bound each call by `timeout_s` and raise asyncio.TimeoutError past it.
"""
from __future__ import annotations

import asyncio
import os
import string
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

from deployments.llm_engine import LLMModelConfig
from deployments.nodes.base import Node, NodeSpec


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(48, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0, le=2)
    timeout_s: float = Field(5.0, gt=0, le=300, description="Bound on one completion.")


class RemoteLLMConfig(_Sampling):
    mode: Literal["remote"] = "remote"
    url: str = Field("http://127.0.0.1:8000/v1", description="Base URL of the OpenAI-compatible API.")
    model: str = Field(min_length=1, description="Served model id.")
    api_key_env: Optional[str] = Field(None, description="Environment variable holding the API key, if the server wants one.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url.rstrip("/")

    @property
    def model_name(self) -> str:
        return self.model


class EmbeddedLLMConfig(_Sampling):
    mode: Literal["embedded"]
    engine: LLMModelConfig = Field(description="The registered model and its engine, deployed inside this application.")

    @property
    def model_name(self) -> str:
        return self.engine.name


def _mode(value: Any) -> str:
    return value.get("mode", "remote") if isinstance(value, dict) else getattr(value, "mode", "remote")


LLMNodeConfig = Annotated[
    Union[Annotated[RemoteLLMConfig, Tag("remote")], Annotated[EmbeddedLLMConfig, Tag("embedded")]],
    Discriminator(_mode),
]


@dataclass
class Completion:
    text: str
    completion_tokens: int


class RemoteLLM:
    def __init__(self, config: RemoteLLMConfig):
        from openai import AsyncOpenAI

        self.config = config
        key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        self._client = AsyncOpenAI(base_url=config.url, api_key=key or "unused", max_retries=0, timeout=config.timeout_s)

    async def chat(self, prompt: str) -> Completion:
        """Raises asyncio.TimeoutError past `timeout_s`, openai errors otherwise."""
        from openai import APITimeoutError
        from opentelemetry.propagate import inject

        trace_headers: dict[str, str] = {}
        inject(trace_headers)  # W3C traceparent of the current span, if any: the server's spans join this trace
        request = self._client.chat.completions.create(
            model=self.config.model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=self.config.max_tokens,
            temperature=self.config.temperature,
            extra_headers=trace_headers or None,
        )
        try:
            response = await asyncio.wait_for(request, self.config.timeout_s)
        except APITimeoutError:
            raise asyncio.TimeoutError from None
        return Completion(response.choices[0].message.content or "", response.usage.completion_tokens)


class LLMError(RuntimeError):
    """The engine answered with an error (vLLM's ErrorResponse)."""


class EmbeddedLLM:
    """Calls an LLMServer deployment of the same application by handle."""

    def __init__(self, config: EmbeddedLLMConfig, handle: Any):
        self.config = config
        self._handle = handle.options(stream=True)

    async def chat(self, prompt: str) -> Completion:
        from ray.serve.llm.openai_api_models import ChatCompletionRequest, ErrorResponse

        request = ChatCompletionRequest(
            model=self.config.engine.name,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=self.config.max_tokens,
            temperature=self.config.temperature,
        )
        responses = self._handle.chat.remote(request)
        try:
            response = await asyncio.wait_for(responses.__anext__(), self.config.timeout_s)
        except asyncio.TimeoutError:
            responses.cancel()  # aborts the request in the engine
            raise
        if isinstance(response, ErrorResponse):
            raise LLMError(response.error.message)
        return Completion(response.choices[0].message.content or "", response.usage.completion_tokens)


def llm_node(config: RemoteLLMConfig | EmbeddedLLMConfig, handle: Any = None) -> RemoteLLM | EmbeddedLLM:
    if isinstance(config, EmbeddedLLMConfig):
        if handle is None:
            raise ValueError("an embedded LLM node needs the handle of its engine deployment")
        return EmbeddedLLM(config, handle)
    return RemoteLLM(config)


def template_fields(template: str) -> set[str]:
    """Names a str.format template refers to ("{item_features__price:.2f}" -> item_features__price)."""
    return {name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(template) if name}


def render(template: str, values: dict[str, Any]) -> str:
    return template.format(**values)


def _checked_template(template: str) -> str:
    try:
        template_fields(template)
    except ValueError as error:
        raise ValueError(f"not a str.format template: {error}") from None
    return template


PromptTemplate = Annotated[str, AfterValidator(_checked_template)]
"""A `str.format` template, checked to parse when the config is read."""


class LLMNode(NodeSpec):
    """A chat completion of a rendered prompt (module docstring)."""

    kind: Literal["llm"]
    config: LLMNodeConfig
    prompt_template: PromptTemplate = Field(min_length=1)
    default_num_cpus: ClassVar[float] = 0.25  # waits on the LLM server or its engine deployment

    def inputs_taken(self) -> tuple[set[str], Optional[set[str]]]:
        return template_fields(self.prompt_template), set()

    def companion(self, name: str) -> Any:
        """`mode: embedded`: its engine, ray.serve.llm's LLMServer, in the graph's application."""
        if not isinstance(self.config, EmbeddedLLMConfig):
            return None
        from deployments.llm_engine import resolve
        from deployments.llm_rollout import llm_deployment

        engine = self.config.engine
        return llm_deployment(engine, resolve(engine), name_prefix=f"GraphLLM:{name}:")

    def build(self, name: str, companion: Any = None) -> Node:
        if isinstance(self.config, EmbeddedLLMConfig) and companion is None:
            raise ValueError("an embedded LLM runs in the graph's Serve application: in-process, use mode: remote")
        return LLMRunner(self, companion)


class LLMRunner(Node):
    def __init__(self, spec: LLMNode, engine: Any = None):
        self.spec = spec
        self.llm = llm_node(spec.config, engine)

    def fields(self) -> set[str]:
        return {"text", "model"}

    async def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        completion = await self.llm.chat(render(self.spec.prompt_template, inputs))
        return {"text": completion.text.strip(), "model": self.spec.config.model_name}
