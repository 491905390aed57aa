"""Model registry settings: packaged names, JSON specs, a models file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

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
