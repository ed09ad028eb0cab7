"""Named API keys, read from where shells and Kubernetes keep secrets.

A key is configured by *name* and *source* (an environment variable, or a
file such as a mounted Kubernetes Secret), so its value never sits in a
config file. Names make rotation possible (add `next`, move the clients,
drop `primary`) and let logs say which key a request used without printing
it. Values are read once, where the app starts (the replica, not the driver
that builds the deployment), so a rotation is a redeploy.

A slot may be `optional` (the `next` key between two rotations): when its
source is absent (no such file, or an unset or empty variable or file) it is
skipped and the replica starts with the other keys. Everything else still
fails the start: an optional file that exists but cannot be read, a value too
short, and a ring left with no key at all (never "configured, so open").
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from deployments.http.security.rate_limits import RateLimit

logger = logging.getLogger(__name__)

MIN_KEY_CHARS = 16


class KeyUnavailable(RuntimeError):
    """A configured key could not be read; the message names the key and its source, never a value."""


class KeyAbsent(KeyUnavailable):
    """The key's source is not there: no such file, or an unset or empty variable or file.
    An `optional` key that is absent is skipped; a required one fails the start."""


class ApiKeySource(BaseModel):
    """Where one named key lives: `{name: primary, env: SG_KEY_PRIMARY}` or
    `{name: primary, file: /var/run/secrets/serve-graphs/api-key-primary}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Names the key in logs, e.g. primary, next.")
    env: Optional[str] = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Environment variable holding the key.")
    file: Optional[Path] = Field(None, description="File holding the key (a mounted Secret); surrounding whitespace ignored.")
    optional: bool = Field(
        False,
        description="A slot that may be empty, e.g. `next` between rotations: when the file is missing or the "
        "variable or file is empty, the key is skipped instead of failing the start.",
    )
    rate_limit: Optional[RateLimit] = Field(
        None, description="Requests per second and burst for this key, per replica; over it, 429 with Retry-After."
    )

    @model_validator(mode="after")
    def _one_source(self) -> "ApiKeySource":
        if (self.env is None) == (self.file is None):
            raise ValueError(f"api key {self.name!r}: set exactly one of `env` or `file`")
        return self

    def load(self) -> SecretStr:
        """The key; KeyAbsent when its source is not there, KeyUnavailable for any other failure."""
        if self.env is not None:
            where, raw = f"environment variable {self.env}", os.environ.get(self.env, "")
        else:
            where = f"file {self.file}"
            try:
                raw = Path(self.file).read_text(encoding="utf-8")
            except FileNotFoundError:
                # Also a Secret that is not mounted at all: its directory is missing too.
                raise KeyAbsent(f"api key {self.name!r}: cannot read {where}: FileNotFoundError") from None
            except (OSError, UnicodeDecodeError) as error:
                # PermissionError included: the file is there but this user may not read it (defaultMode, fsGroup).
                raise KeyUnavailable(f"api key {self.name!r}: cannot read {where}: {type(error).__name__}") from None
        value = raw.strip()
        if not value:
            raise KeyAbsent(f"api key {self.name!r}: {where} is unset or empty")
        if len(value) < MIN_KEY_CHARS:
            raise KeyUnavailable(f"api key {self.name!r}: {where} holds fewer than {MIN_KEY_CHARS} characters")
        return SecretStr(value)


def _digest(value: bytes) -> bytes:
    # Equal-length digests: compare_digest then leaks neither content nor length.
    return hashlib.sha256(value).digest()


class KeyRing:
    """The loaded keys, kept as SHA-256 digests by name.

    `match` compares the presented key with every configured key, each in
    constant time, and never stops early: the time taken does not depend on
    which key (if any) matched.

    Optional keys whose source is absent are left out (`skipped` names them).
    Sources given but no key loaded is an error, never an empty (open) ring.
    """

    def __init__(self, sources: Sequence[ApiKeySource]):
        names = [source.name for source in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"api key names must be unique, got {names}")
        self._digests: list[tuple[str, bytes]] = []
        self.skipped: list[str] = []
        for source in sources:
            try:
                value = source.load()
            except KeyAbsent as absent:
                if not source.optional:
                    raise
                logger.info("%s; optional, so skipped: not accepted until a replica starts with it", absent)
                self.skipped.append(source.name)
                continue
            self._digests.append((source.name, _digest(value.get_secret_value().encode("utf-8"))))
        if sources and not self._digests:
            raise KeyUnavailable(
                f"api keys {names}: none is present (all optional and absent); refusing to start with every route open"
            )

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._digests]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __repr__(self) -> str:
        return f"KeyRing(names={self.names})"

    def match(self, presented: bytes) -> Optional[str]:
        """The name of the key equal to `presented`, or None."""
        digest = _digest(presented)
        hits = [hmac.compare_digest(digest, known) for _, known in self._digests]
        return next((name for (name, _), hit in zip(self._digests, hits) if hit), None)
