"""An OpenAI-compatible API for vLLM engines, models from the MLflow registry.

`serve run configs/local.yaml` serves it under `/v1`:

    GET  /v1/models                 what is loaded, and which registry version
    POST /v1/chat/completions       (stream: true for server-sent events)
    POST /v1/completions

The OpenAI surface, the engine replicas and request streaming are
`ray.serve.llm`'s (OpenAiIngress + LLMServer on vLLM); this module resolves
the models from the registry and reports their versions.
"""
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from ray.serve.llm import build_llm_deployment
from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress

from apps import openai_errors
from deployments.llm_engine import LLMModelConfig, llm_config, resolve


class ChatArgs(BaseModel):
    """Application args of the chat app (the `args:` of its Serve config)."""

    model_config = ConfigDict(extra="forbid")

    models: list[LLMModelConfig] = Field(min_length=1, description="Models to serve, one engine deployment each.")


class RegistryIngress(OpenAiIngress):
    """OpenAiIngress whose model list names the registry version of each model."""

    def __init__(self, *args, registry: dict[str, dict[str, str]], **kwargs):
        super().__init__(*args, **kwargs)
        self._registry = registry

    async def models(self):
        listing = await super().models()
        for card in listing.data:
            source = self._registry.get(card.id)
            if source:
                card.metadata = {**(card.metadata or {}), "registry": source}
        return listing


# Routes without the /v1 prefix: the application's route_prefix is /v1, so
# /v1/... goes to this app and everything else to the other graphs.
ENDPOINTS = {
    "models": lambda app: app.get("/models"),
    "model_data": lambda app: app.get("/models/{model:path}"),
    "completions": lambda app: app.post("/completions"),
    "chat": lambda app: app.post("/chat/completions"),
}


def build(args: ChatArgs) -> Application:
    args = ChatArgs.model_validate(args)
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata

    deployments: dict[str, Any] = {}
    cards: dict[str, Any] = {}
    registry: dict[str, dict[str, str]] = {}
    for model in args.models:
        resolved = resolve(model)
        config = llm_config(model, resolved)
        deployments[model.name] = build_llm_deployment(config, name_prefix=f"{model.name}:")
        cards[model.name] = to_model_metadata(model.name, config)
        registry[model.name] = {"uri": f"models:/{model.name}@{model.alias}", "version": resolved.version, "alias": model.alias}
    from ray.llm._internal.serve.core.ingress.ingress import init as ingress_app

    ingress = make_fastapi_ingress(RegistryIngress, endpoint_map=ENDPOINTS, app=openai_errors.install(ingress_app()))
    return serve.deployment(ingress, max_ongoing_requests=256, ray_actor_options={"num_cpus": 0}).bind(
        llm_deployments=deployments, model_cards=cards, registry=registry
    )
