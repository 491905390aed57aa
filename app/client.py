"""Python client for logprobe, sync (`Client`) and async (`AsyncClient`), over httpx.

Answers come back as the service's own response models; full distributions as numpy arrays [positions, V].
Errors raise `LogprobeError` with the service's status and machine-readable code.

    from app.client import Client
    with Client("http://127.0.0.1:8000", api_key=None) as lp:
        scored = lp.score("smollm2-135m-instruct", text="The capital of France is Paris.")
        rows = lp.logprobs(scored.record_id, start=1, stop=4)
"""

from __future__ import annotations

from typing import Any, Literal

import httpx
import numpy as np
from safetensors.numpy import load as st_load

from app.api.analysis import AnalysisResponse
from app.api.decode import DecodeResponse
from app.api.generate import GenerateResponse
from app.api.models import ModelList
from app.api.records import RecordResponse
from app.api.score import ScoreResponse

Family = Literal["uncertainty", "detect", "membership", "compare"]


class LogprobeError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            raise LogprobeError(response.status_code, error.get("code", "error"), error.get("message", ""))
        except (ValueError, KeyError, TypeError):
            raise LogprobeError(response.status_code, "http_error", response.text[:200]) from None
    return response


def _clean(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _rows(content: bytes) -> np.ndarray:
    rows: np.ndarray = st_load(content)["logprobs"]
    return rows


class _Requests:
    """What each call sends, shared by the sync and async clients."""

    @staticmethod
    def score(
        model: str, text: str | None, messages: list[dict[str, Any]] | None, top_logprobs: int | None
    ) -> dict[str, Any]:
        return _clean({"model": model, "text": text, "messages": messages, "top_logprobs": top_logprobs})

    @staticmethod
    def analyze(family: Family, **body: Any) -> tuple[str, dict[str, Any]]:
        return f"/v1/analysis/{family}", _clean(body)


class Client:
    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 300.0
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST a JSON body to any endpoint; the JSON answer (LogprobeError for an error envelope)."""
        return _check(self.http.post(path, json=body)).json()

    def models(self) -> ModelList:
        return ModelList.model_validate(_check(self.http.get("/v1/models")).json())

    def score(
        self,
        model: str,
        text: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        top_logprobs: int | None = None,
    ) -> ScoreResponse:
        return ScoreResponse.model_validate(
            self.post("/v1/score", _Requests.score(model, text, messages, top_logprobs))
        )

    def generate(
        self, model: str, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **sampling: Any
    ) -> GenerateResponse:
        body = _clean({"model": model, "prompt": prompt, "messages": messages, **sampling})
        return GenerateResponse.model_validate(self.post("/v1/generate", body))

    def record(self, record_id: str, top_logprobs: int | None = None) -> RecordResponse:
        params = _clean({"top_logprobs": top_logprobs})
        return RecordResponse.model_validate(_check(self.http.get(f"/v1/records/{record_id}", params=params)).json())

    def logprobs(self, record_id: str, start: int = 1, stop: int | None = None) -> np.ndarray:
        """Full log-probability rows [stop - start, V]; row i is the distribution that predicted token start+i."""
        params = _clean({"start": start, "stop": stop})
        return _rows(_check(self.http.get(f"/v1/records/{record_id}/logprobs", params=params)).content)

    def analyze(self, family: Family, **body: Any) -> AnalysisResponse:
        path, payload = _Requests.analyze(family, **body)
        return AnalysisResponse.model_validate(self.post(path, payload))

    def decode(self, prompt: str, **body: Any) -> DecodeResponse:
        return DecodeResponse.model_validate(self.post("/v1/decode/contrastive", _clean({"prompt": prompt, **body})))


class AsyncClient:
    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 300.0
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        return _check(await self.http.post(path, json=body)).json()

    async def models(self) -> ModelList:
        return ModelList.model_validate(_check(await self.http.get("/v1/models")).json())

    async def score(
        self,
        model: str,
        text: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        top_logprobs: int | None = None,
    ) -> ScoreResponse:
        body = _Requests.score(model, text, messages, top_logprobs)
        return ScoreResponse.model_validate(await self.post("/v1/score", body))

    async def generate(
        self, model: str, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **sampling: Any
    ) -> GenerateResponse:
        body = _clean({"model": model, "prompt": prompt, "messages": messages, **sampling})
        return GenerateResponse.model_validate(await self.post("/v1/generate", body))

    async def record(self, record_id: str, top_logprobs: int | None = None) -> RecordResponse:
        params = _clean({"top_logprobs": top_logprobs})
        response = await self.http.get(f"/v1/records/{record_id}", params=params)
        return RecordResponse.model_validate(_check(response).json())

    async def logprobs(self, record_id: str, start: int = 1, stop: int | None = None) -> np.ndarray:
        params = _clean({"start": start, "stop": stop})
        return _rows(_check(await self.http.get(f"/v1/records/{record_id}/logprobs", params=params)).content)

    async def analyze(self, family: Family, **body: Any) -> AnalysisResponse:
        path, payload = _Requests.analyze(family, **body)
        return AnalysisResponse.model_validate(await self.post(path, payload))

    async def decode(self, prompt: str, **body: Any) -> DecodeResponse:
        payload = _clean({"prompt": prompt, **body})
        return DecodeResponse.model_validate(await self.post("/v1/decode/contrastive", payload))
