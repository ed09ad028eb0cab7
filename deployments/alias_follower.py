"""A model node's version, kept on the version its MLflow alias names: the
registry-driven rollout shared by the node kinds that serve a registered
model (`v2_model`, `torch_model`).

Every `poll_s` the alias is read again. A moved alias's version is handed
to the node's `adopt` (Triton: is that version ready there; PyTorch: load
it beside the serving one), whose result becomes what requests use, all at
once; when `adopt` raises, the old version serves on and the reason is kept
in `problem` (readiness shows it) and logged once. The registry being down
changes nothing but `problem`. Each request takes `current()` once, so none
mixes two versions.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Generic, Optional, TypeVar

from deployments.registry import ModelRef, resolve_alias

logger = logging.getLogger(__name__)

Serving = TypeVar("Serving")


class NotAdopted(Exception):
    """`adopt`'s refusal; its text completes "points to version N, which ..."."""

    log_level = logging.ERROR


class Pending(NotAdopted):
    """Not a refusal: the version is on its way by other means (an LLM app's rolling update)."""

    log_level = logging.INFO


class AliasFollower(Generic[Serving]):
    def __init__(self, registry_uri: str, model: str, alias: str, poll_s: Optional[float], serving: Serving,
                 ref_of: Callable[[Serving], ModelRef], adopt: Callable[[ModelRef], Awaitable[Serving]]):
        self.registry_uri, self.model, self.alias, self.poll_s = registry_uri, model, alias, poll_s
        self.serving, self.ref_of, self.adopt = serving, ref_of, adopt
        self.problem: Optional[str] = None  # why the alias's current target is not served
        self._poller: Optional[asyncio.Task] = None

    @property
    def ref(self) -> ModelRef:
        return self.ref_of(self.serving)

    def current(self) -> Serving:
        """What one request uses, taken once (the poller starts on the first call, in the replica's loop)."""
        if self.poll_s and self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        return self.serving

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.refresh()
            except Exception as error:  # the registry down: keep serving what we have
                self.problem = f"registry: {short_reason(error)}"
                logger.warning("%s@%s: %s; still serving version %s", self.model, self.alias, self.problem, self.ref.version)

    async def refresh(self) -> ModelRef:
        """Follow the alias now, if its version is adopted."""
        new = await asyncio.to_thread(resolve_alias, self.registry_uri, self.model, self.alias)
        if new.version == self.ref.version:
            self.problem = None
            return self.ref
        try:
            serving = await self.adopt(new)
        except Exception as error:
            reason = str(error) if isinstance(error, NotAdopted) else f"does not load ({type(error).__name__}: {short_reason(error)})"
            problem = f"{new.name}@{new.alias} points to version {new.version}, which {reason}; still serving version {self.ref.version}"
            if problem != self.problem:
                logger.log(error.log_level if isinstance(error, NotAdopted) else logging.ERROR, problem)
            self.problem = problem
            return self.ref
        logger.info("%s@%s: version %s -> %s", new.name, new.alias, self.ref.version, new.version)
        self.serving, self.problem = serving, None
        return new

    def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None


def short_reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__
