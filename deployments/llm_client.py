"""LLM node, remote mode: an OpenAI-compatible server given by URL (vLLM's
own OpenAI server running as its own service, or this platform's chat app),
through the official `openai` asyncio client: one client per node (pooled
connections), a per-call timeout, no retries (the caller decides)."""
from __future__ import annotations

import asyncio
import string
from dataclasses import dataclass
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator


class LLMClientConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field("http://127.0.0.1:8000/v1", description="Base URL of the OpenAI-compatible API.")
    model: str = Field(min_length=1, description="Served model id.")
    api_key_env: Optional[str] = Field(None, description="Environment variable holding the API key, if the server wants one.")
    max_tokens: int = Field(48, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0, le=2)
    timeout_s: float = Field(5.0, gt=0, le=300, description="Bound on one completion.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url.rstrip("/")


@dataclass
class Completion:
    text: str
    completion_tokens: int


class LLMClient:
    backend = "llm"

    def __init__(self, config: LLMClientConfig):
        import os

        from openai import AsyncOpenAI

        self.config = config
        key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        self._client = AsyncOpenAI(base_url=config.url, api_key=key or "unused", max_retries=0, timeout=config.timeout_s)

    async def chat(self, prompt: str) -> Completion:
        """Raises asyncio.TimeoutError past `timeout_s`, openai errors otherwise."""
        from openai import APITimeoutError

        try:
            response = await self._create(prompt)
        except APITimeoutError:
            raise asyncio.TimeoutError from None
        return Completion(response.choices[0].message.content or "", response.usage.completion_tokens)

    async def _create(self, prompt: str):
        return await asyncio.wait_for(
            self._client.chat.completions.create(
                model=self.config.model,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=self.config.max_tokens,
                temperature=self.config.temperature,
            ),
            self.config.timeout_s,
        )


def template_fields(template: str) -> set[str]:
    """Names a str.format template refers to ("{item_features__price:.2f}" -> item_features__price)."""
    return {name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(template) if name}


def render(template: str, values: dict[str, Any]) -> str:
    return template.format(**values)
