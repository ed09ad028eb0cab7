"""Optional key slots: `next` may be empty between two rotations without
failing the replica's start, and nothing else about a key is forgiven.

The cluster mounts one Secret as files (`<mount>/primary`, `<mount>/next`);
a key missing from the Secret is a missing file."""
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from deployments.http.security import ApiKeySource, HttpSecurity, KeyAbsent, KeyRing, KeyUnavailable
from tests.unit.asgi_calls import tiny_app

PRIMARY = "sg-primary-0123456789abcdef"
NEXT = "sg-next-fedcba9876543210ZZ"


@pytest.fixture
def mount(tmp_path):
    """A mounted Secret that holds `primary` only (as between rotations)."""
    folder = tmp_path / "api-keys"
    folder.mkdir()
    (folder / "primary").write_text(PRIMARY)
    return folder


def slots(mount, next_optional: bool = True) -> dict:
    return {
        "api_keys": [
            {"name": "primary", "file": str(mount / "primary")},
            {"name": "next", "file": str(mount / "next"), "optional": next_optional},
        ]
    }


def test_an_absent_optional_file_is_skipped_and_logged_by_name(mount, caplog):
    caplog.set_level(logging.INFO)
    ring = KeyRing(HttpSecurity.model_validate(slots(mount)).api_keys)
    assert (ring.names, ring.skipped) == (["primary"], ["next"])
    assert ring.match(PRIMARY.encode()) == "primary" and ring.match(NEXT.encode()) is None
    assert f"api key 'next': cannot read file {mount / 'next'}: FileNotFoundError; optional, so skipped" in caplog.text
    client = TestClient(tiny_app(slots(mount)))
    assert client.post("/v1/echo", headers={"X-API-Key": PRIMARY}).status_code == 200
    assert client.post("/v1/echo", headers={"X-API-Key": NEXT}).status_code == 401


def test_the_optional_key_counts_once_it_is_there(mount):
    """The next replica start (a rotation's roll) reads it."""
    (mount / "next").write_text(NEXT + "\n")
    ring = KeyRing(HttpSecurity.model_validate(slots(mount)).api_keys)
    assert (ring.names, ring.skipped) == (["primary", "next"], [])
    assert ring.match(NEXT.encode()) == "next"


def test_a_required_slot_still_fails_the_start(mount):
    with pytest.raises(KeyAbsent, match=f"'next': cannot read file {mount / 'next'}: FileNotFoundError"):
        tiny_app(slots(mount, next_optional=False))
    (mount / "primary").unlink()
    with pytest.raises(KeyUnavailable, match="'primary': cannot read file"):
        tiny_app(slots(mount))


def test_a_secret_that_is_not_mounted_at_all_is_the_same_as_missing_files(tmp_path):
    """E.g. a replica on a pod without the volume: the required key fails it."""
    absent = tmp_path / "not-mounted"
    with pytest.raises(KeyAbsent, match="'primary'"):
        KeyRing(HttpSecurity.model_validate(slots(absent)).api_keys)


@pytest.mark.parametrize("content", ["", "\n", "   \n"])
def test_an_empty_optional_file_is_absent_too(mount, content):
    """`kubectl create secret --from-literal=next=` leaves an empty file."""
    (mount / "next").write_text(content)
    assert KeyRing(HttpSecurity.model_validate(slots(mount)).api_keys).skipped == ["next"]


def test_an_optional_env_var_unset_or_empty_is_absent(monkeypatch, mount):
    monkeypatch.delenv("SG_KEY_NEXT", raising=False)
    config = {"api_keys": [{"name": "primary", "file": str(mount / "primary")},
                           {"name": "next", "env": "SG_KEY_NEXT", "optional": True}]}
    assert KeyRing(HttpSecurity.model_validate(config).api_keys).skipped == ["next"]
    monkeypatch.setenv("SG_KEY_NEXT", "")
    assert KeyRing(HttpSecurity.model_validate(config).api_keys).skipped == ["next"]


def test_an_optional_key_that_is_there_but_too_short_fails(mount):
    """A truncated paste is a mistake, not an empty slot."""
    (mount / "next").write_text(NEXT[:8])
    with pytest.raises(KeyUnavailable, match="'next': file .* holds fewer than 16 characters") as raised:
        KeyRing(HttpSecurity.model_validate(slots(mount)).api_keys)
    assert not isinstance(raised.value, KeyAbsent)
    assert NEXT[:8] not in str(raised.value)


def test_an_optional_file_that_cannot_be_read_fails(mount, monkeypatch):
    """Present but unreadable (a wrong defaultMode or fsGroup) fails loudly, optional or not."""
    (mount / "next").write_text(NEXT)
    read_text = Path.read_text

    def denied(self, *args, **kwargs):
        if self == mount / "next":  # as for uid 1000 on a root-owned 0400 file (tests may run as root)
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(KeyUnavailable, match="'next': cannot read file .*: PermissionError") as raised:
        KeyRing(HttpSecurity.model_validate(slots(mount)).api_keys)
    assert not isinstance(raised.value, KeyAbsent)


def test_a_ring_never_ends_up_empty_and_open(tmp_path):
    """Built directly from only-optional sources that are all absent, the ring refuses."""
    sources = [ApiKeySource(name="next", file=tmp_path / "next", optional=True)]
    with pytest.raises(KeyUnavailable, match="none is present .* refusing to start with every route open"):
        KeyRing(sources)
    assert not KeyRing([])  # nothing configured: open, and ApiKeyAuth warns (test_security_auth)


def test_a_config_of_only_optional_keys_is_refused(tmp_path):
    with pytest.raises(ValidationError, match="at least one api key must be required"):
        HttpSecurity.model_validate({"api_keys": [{"name": "next", "file": str(tmp_path / "next"), "optional": True}]})


def test_the_apps_take_the_optional_flag():
    from apps.chat import ChatArgs
    from apps.graph import GraphArgs
    from tests.servers import load_config

    config = {"api_keys": [{"name": "primary", "file": "/k/primary"}, {"name": "next", "file": "/k/next", "optional": True}]}
    graph = load_config()["applications"][0]["args"]
    assert [k.optional for k in GraphArgs.model_validate({**graph, "http": config}).http.api_keys] == [False, True]
    model = {"name": "smollm2", "registry_uri": "sqlite:///x.db"}
    assert ChatArgs.model_validate({"model": model, "http": config}).http.api_keys[1].optional is True
