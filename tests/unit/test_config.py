"""Settings: the model registry (packaged names, JSON specs, a models file); the gateway's access (closed without
keys) and its export policy."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.platform.settings import Settings, open_on_loopback
from workers.config import CommonSettings


def test_default_is_the_packaged_smollm2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOGPROBE_MODELS", raising=False)
    assert [m.name for m in CommonSettings().models] == ["smollm2-135m-instruct"]


def test_names_specs_and_a_models_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LOGPROBE_MODELS", "smollm2-135m-instruct, gemma-3-270m")
    settings = CommonSettings()
    assert [m.name for m in settings.models] == ["smollm2-135m-instruct", "gemma-3-270m"]
    assert settings.model_spec("gemma-3-270m").add_bos is True  # type: ignore[union-attr]
    models_file = tmp_path / "models.json"
    models_file.write_text(json.dumps([{"name": "local", "source": "gguf", "path": "/x.gguf", "dtype": "bfloat16"}]))
    monkeypatch.setenv("LOGPROBE_MODELS", '["smollm2-135m-instruct"]')
    monkeypatch.setenv("LOGPROBE_MODELS_FILE", str(models_file))
    settings = CommonSettings()
    assert [m.name for m in settings.models] == ["smollm2-135m-instruct", "local"]
    assert settings.models[1].dtype == "bfloat16"


@pytest.mark.parametrize(
    "value",
    ["no-such-packaged-model", '[{"name": "x", "source": "hf"}]', '[{"name": "bad name!", "source": "packaged"}]'],
)
def test_bad_model_settings_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LOGPROBE_MODELS", value)
    with pytest.raises(ValidationError):
        CommonSettings()


def gateway_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name in ("LOGPROBE_API_KEYS", "LOGPROBE_API_KEYS_FILE", "LOGPROBE_ALLOW_ANONYMOUS", "LOGPROBE_ALLOW_EXPORT"):
        monkeypatch.setenv(name, "")  # recorded as it was, so what open_on_loopback sets is undone after the test
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_the_gateway_is_closed_without_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as refused:
        gateway_settings(monkeypatch).check_access()
    assert "LOGPROBE_API_KEYS" in str(refused.value) and "LOGPROBE_ALLOW_ANONYMOUS=true" in str(refused.value)
    gateway_settings(monkeypatch, LOGPROBE_API_KEYS='{"k": "t"}').check_access()
    gateway_settings(monkeypatch, LOGPROBE_ALLOW_ANONYMOUS="true").check_access()
    keys = tmp_path / "keys.json"
    keys.write_text('{"k": "t"}')
    gateway_settings(monkeypatch, LOGPROBE_API_KEYS_FILE=str(keys)).check_access()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_serve_opens_a_loopback_address_without_keys(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    settings = gateway_settings(monkeypatch)
    open_on_loopback(settings, host)
    assert settings.allow_anonymous and os.environ["LOGPROBE_ALLOW_ANONYMOUS"] == "true"  # for gateway processes
    settings.check_access()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.org"])
def test_serve_on_another_address_needs_keys_or_an_explicit_opt_in(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    with pytest.raises(SystemExit) as refused:
        open_on_loopback(gateway_settings(monkeypatch), host)
    assert str(refused.value).count("\n") == 0 and host in str(refused.value)
    assert "LOGPROBE_ALLOW_ANONYMOUS" not in os.environ
    keyed = gateway_settings(monkeypatch, LOGPROBE_API_KEYS='{"k": "t"}')
    open_on_loopback(keyed, host)
    assert not keyed.allow_anonymous
    explicit = gateway_settings(monkeypatch, LOGPROBE_ALLOW_ANONYMOUS="true")
    open_on_loopback(explicit, host)
    explicit.check_access()


def test_one_export_policy_for_alternatives(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gateway_settings(monkeypatch).top_alternatives() == 20
    assert gateway_settings(monkeypatch, LOGPROBE_ALLOW_EXPORT="false").top_alternatives() == 5
    monkeypatch.setenv("LOGPROBE_MAX_TOP_LOGPROBS_OUT", "2")
    assert gateway_settings(monkeypatch).top_alternatives() == 2


@pytest.mark.parametrize("tenant", ["a:b", "", "x" * 65, "tenant with spaces", "../etc"])
def test_tenant_names_that_could_reach_other_keys_are_refused(monkeypatch: pytest.MonkeyPatch, tenant: str) -> None:
    with pytest.raises(ValidationError, match="tenant names"):
        gateway_settings(monkeypatch, LOGPROBE_API_KEYS=json.dumps({"key": tenant}))
    assert gateway_settings(monkeypatch, LOGPROBE_API_KEYS='{"key": "team-a.prod_1"}').api_keys == {
        "key": "team-a.prod_1"
    }
