"""Python client for logprobe, sync (`Client`) and async (`AsyncClient`), over httpx.

It imports httpx, pydantic, numpy and `logprobe.schemas` only, so a plain `pip install logprobe` (no gateway extras)
gives a working client. Answers come back as the service's own response models; full distributions as numpy arrays
[positions, V]; batch results as a list of dicts (one per input); streams as iterators of `ServerEvent`s (decoding)
or of OpenAI chunk dicts. The OpenAI-compatible endpoints answer plain dicts: for
typed OpenAI objects, point the official `openai` package at the service. Errors raise `LogprobeError` with
the service's status and machine-readable code.

    from logprobe.client import Client
    with Client("http://127.0.0.1:8000", api_key=None) as lp:
        scored = lp.score("smollm2-135m-instruct", text="The capital of France is Paris.")
        rows = lp.logprobs(scored.record_id, start=1, stop=4)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import httpx
import numpy as np
from pydantic import BaseModel, TypeAdapter

from logprobe.client.safetensors import load_array
from logprobe.schemas.analysis import AnalysisResponse, MethodInfo
from logprobe.schemas.attribution import AttributionResponse
from logprobe.schemas.batches import Batch, BatchList
from logprobe.schemas.bytes import BytesResponse
from logprobe.schemas.calibrations import Calibration, CalibrationList
from logprobe.schemas.consistency import ConsistencyResponse
from logprobe.schemas.decode import DecodeResponse
from logprobe.schemas.generate import GenerateResponse
from logprobe.schemas.heads import Head, HeadList
from logprobe.schemas.models import ModelList
from logprobe.schemas.score import RecordResponse, Retain, ScoreResponse
from logprobe.schemas.tables import FrequencyTable, FrequencyTableList, StoredFrequencyTable

Family = Literal["uncertainty", "detect", "membership", "compare"]
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
FINISHED = ("completed", "cancelled")
HEAD_FINISHED = ("succeeded", "failed")


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


def _model(kind: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: kind.model_validate(response.json())


def _rows(response: httpx.Response) -> np.ndarray:
    return load_array(response.content, "logprobs")


def _nothing(response: httpx.Response) -> None:
    return None


def _jsonl(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line]


@dataclass
class ServerEvent:
    """One server-sent event: its name (`step`, `done`, `error` for decoding; `message` for OpenAI chunks)."""

    event: str
    data: Any


class SseParser:
    """Server-sent events from lines, as they arrive; OpenAI's `data: [DONE]` ends the stream."""

    def __init__(self) -> None:
        self.event, self.done = "message", False
        self.data: list[str] = []

    def feed(self, line: str) -> list[ServerEvent]:
        if line.startswith("event:"):
            self.event = line[6:].strip()
        elif line.startswith("data:"):
            self.data.append(line[5:].strip())
        elif not line and self.data:
            text, name = "\n".join(self.data), self.event
            self.event, self.data = "message", []
            if text == "[DONE]":
                self.done = True
                return []
            return [ServerEvent(name, json.loads(text))]
        return []


def _stream_body(body: dict[str, Any]) -> dict[str, Any]:
    return {**_clean(body), "stream": True}


@dataclass
class Call(Generic[T]):
    """One request, and how its answer is read: the same for the sync and async clients."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: dict[str, Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)


class Calls:
    """Every endpoint, as a Call."""

    @staticmethod
    def post(path: str, body: dict[str, Any]) -> Call[Any]:
        return Call("POST", path, lambda r: r.json(), body)

    @staticmethod
    def models() -> Call[ModelList]:
        return Call("GET", "/v1/models", _model(ModelList))

    @staticmethod
    def ready() -> Call[bool]:
        return Call("GET", "/readyz", lambda r: r.status_code == 200)

    @staticmethod
    def score(
        model: str,
        text: str | None,
        messages: list[dict[str, Any]] | None,
        top: int | None,
        retain: Retain | None = None,
        layers: list[int] | Literal["all"] | None = None,
    ) -> Call[ScoreResponse]:
        body = {"model": model, "text": text, "messages": messages, "top_logprobs": top, "retain": retain}
        body = _clean({**body, "layers": layers})
        return Call("POST", "/v1/score", _model(ScoreResponse), body)

    @staticmethod
    def generate(
        model: str, prompt: str | None, messages: list[dict[str, Any]] | None, **sampling: Any
    ) -> Call[GenerateResponse]:
        body = _clean({"model": model, "prompt": prompt, "messages": messages, **sampling})
        return Call("POST", "/v1/generate", _model(GenerateResponse), body)

    @staticmethod
    def record(record_id: str, top_logprobs: int | None) -> Call[RecordResponse]:
        return Call(
            "GET", f"/v1/records/{record_id}", _model(RecordResponse), None, _clean({"top_logprobs": top_logprobs})
        )

    @staticmethod
    def logprobs(record_id: str, start: int, stop: int | None, upgrade: bool = False) -> Call[np.ndarray]:
        query = _clean({"start": start, "stop": stop, "upgrade": "true" if upgrade else None})
        return Call("GET", f"/v1/records/{record_id}/logprobs", _rows, None, query)

    @staticmethod
    def analyze(family: Family, body: dict[str, Any]) -> Call[AnalysisResponse]:
        return Call("POST", f"/v1/analysis/{family}", _model(AnalysisResponse), _clean(body))

    @staticmethod
    def methods() -> Call[list[MethodInfo]]:
        adapter = TypeAdapter(list[MethodInfo])
        return Call("GET", "/v1/analysis/methods", lambda r: adapter.validate_python(r.json()))

    @staticmethod
    def put_frequency_table(name: str, model: str, texts: list[str]) -> Call[StoredFrequencyTable]:
        body = {"model": model, "texts": texts}
        return Call("PUT", f"/v1/frequency-tables/{name}", _model(StoredFrequencyTable), body)

    @staticmethod
    def frequency_tables() -> Call[FrequencyTableList]:
        return Call("GET", "/v1/frequency-tables", _model(FrequencyTableList))

    @staticmethod
    def frequency_table(name: str, model: str | None) -> Call[FrequencyTable]:
        return Call("GET", f"/v1/frequency-tables/{name}", _model(FrequencyTable), None, _clean({"model": model}))

    @staticmethod
    def delete_frequency_table(name: str, model: str | None) -> Call[None]:
        return Call("DELETE", f"/v1/frequency-tables/{name}", _nothing, None, _clean({"model": model}))

    @staticmethod
    def calibrate(model: str, examples: list[dict[str, Any]], **options: Any) -> Call[Calibration]:
        # labels 0/1 go as `examples` (the shape heads take), "human"/"machine" as the older `texts`
        field = "texts" if any(isinstance(e.get("label"), str) for e in examples) else "examples"
        return Call(
            "POST", "/v1/calibrations", _model(Calibration), _clean({"model": model, field: examples, **options})
        )

    @staticmethod
    def calibration(calibration_id: str) -> Call[Calibration]:
        return Call("GET", f"/v1/calibrations/{calibration_id}", _model(Calibration))

    @staticmethod
    def calibrations() -> Call[CalibrationList]:
        return Call("GET", "/v1/calibrations", _model(CalibrationList))

    @staticmethod
    def delete_calibration(calibration_id: str) -> Call[None]:
        return Call("DELETE", f"/v1/calibrations/{calibration_id}", _nothing)

    @staticmethod
    def decode(prompt: str, body: dict[str, Any]) -> Call[DecodeResponse]:
        return Call("POST", "/v1/decode/contrastive", _model(DecodeResponse), _clean({"prompt": prompt, **body}))

    @staticmethod
    def byte_level(model: str, text: str, **options: Any) -> Call[BytesResponse]:
        return Call("POST", "/v1/bytes", _model(BytesResponse), _clean({"model": model, "text": text, **options}))

    @staticmethod
    def attribution(positions: list[int], body: dict[str, Any]) -> Call[AttributionResponse]:
        body = _clean({"positions": positions, **body})
        return Call("POST", "/v1/analysis/attribution", _model(AttributionResponse), body)

    @staticmethod
    def consistency(model: str, body: dict[str, Any]) -> Call[ConsistencyResponse]:
        body = _clean({"model": model, **body})
        return Call("POST", "/v1/analysis/consistency", _model(ConsistencyResponse), body)

    @staticmethod
    def train_head(
        name: str, kind: str, model: str, family: str, examples: list[dict[str, Any]], **options: Any
    ) -> Call[Head]:
        body = _clean({"name": name, "kind": kind, "model": model, "family": family, "examples": examples, **options})
        return Call("POST", "/v1/heads", _model(Head), body)

    @staticmethod
    def head(head_id: str) -> Call[Head]:
        return Call("GET", f"/v1/heads/{head_id}", _model(Head))

    @staticmethod
    def heads() -> Call[HeadList]:
        return Call("GET", "/v1/heads", _model(HeadList))

    @staticmethod
    def delete_head(head_id: str) -> Call[None]:
        return Call("DELETE", f"/v1/heads/{head_id}", _nothing)

    @staticmethod
    def completions(body: dict[str, Any]) -> Call[dict[str, Any]]:
        return Call("POST", "/v1/completions", lambda r: r.json(), body)

    @staticmethod
    def chat_completions(body: dict[str, Any]) -> Call[dict[str, Any]]:
        return Call("POST", "/v1/chat/completions", lambda r: r.json(), body)

    @staticmethod
    def create_batch(model: str, inputs: list[dict[str, Any]], **options: Any) -> Call[Batch]:
        return Call("POST", "/v1/batches", _model(Batch), _clean({"model": model, "inputs": inputs, **options}))

    @staticmethod
    def batch(batch_id: str) -> Call[Batch]:
        return Call("GET", f"/v1/batches/{batch_id}", _model(Batch))

    @staticmethod
    def batches(limit: int) -> Call[BatchList]:
        return Call("GET", "/v1/batches", _model(BatchList), None, {"limit": limit})

    @staticmethod
    def cancel_batch(batch_id: str) -> Call[Batch]:
        return Call("POST", f"/v1/batches/{batch_id}/cancel", _model(Batch))

    @staticmethod
    def delete_batch(batch_id: str) -> Call[None]:
        return Call("DELETE", f"/v1/batches/{batch_id}", _nothing)

    @staticmethod
    def batch_results(batch_id: str) -> Call[list[dict[str, Any]]]:
        return Call("GET", f"/v1/batches/{batch_id}/results", _jsonl)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class Client:
    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 300.0
    ) -> None:
        self.http = httpx.Client(base_url=base_url, headers=_headers(api_key), timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def send(self, call: Call[T]) -> T:
        response = self.http.request(call.method, call.path, json=call.json, params=call.params)
        return call.parse(response if call.path == "/readyz" else _check(response))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST a JSON body to any endpoint; the JSON answer (LogprobeError for an error envelope)."""
        return self.send(Calls.post(path, body))

    def ready(self) -> bool:
        return self.send(Calls.ready())

    def models(self) -> ModelList:
        return self.send(Calls.models())

    def score(
        self,
        model: str,
        text: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        top_logprobs: int | None = None,
        retain: Retain | None = None,
        layers: list[int] | Literal["all"] | None = None,
    ) -> ScoreResponse:
        """`layers`: hidden_states indices (or "all") whose states the record keeps too (export: /hidden?layer=)."""
        return self.send(Calls.score(model, text, messages, top_logprobs, retain, layers))

    def generate(
        self, model: str, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **sampling: Any
    ) -> GenerateResponse:
        return self.send(Calls.generate(model, prompt, messages, **sampling))

    def record(self, record_id: str, top_logprobs: int | None = None) -> RecordResponse:
        return self.send(Calls.record(record_id, top_logprobs))

    def logprobs(self, record_id: str, start: int = 1, stop: int | None = None, upgrade: bool = False) -> np.ndarray:
        """Full log-probability rows [stop - start, V]; row i is the distribution that predicted token start+i.
        `upgrade`: a record kept as statistics only is re-scored with full rows first (else 409 rows_not_retained)."""
        return self.send(Calls.logprobs(record_id, start, stop, upgrade))

    def analyze(self, family: Family, **body: Any) -> AnalysisResponse:
        return self.send(Calls.analyze(family, body))

    def methods(self) -> list[MethodInfo]:
        return self.send(Calls.methods())

    def put_frequency_table(self, name: str, model: str, texts: list[str]) -> StoredFrequencyTable:
        return self.send(Calls.put_frequency_table(name, model, texts))

    def frequency_tables(self) -> FrequencyTableList:
        """The packaged `default` table, then this key's tables, newest first."""
        return self.send(Calls.frequency_tables())

    def frequency_table(self, name: str, model: str | None = None) -> FrequencyTable:
        return self.send(Calls.frequency_table(name, model))

    def delete_frequency_table(self, name: str, model: str | None = None) -> None:
        """Delete the tables called `name` (only `model`'s tokenizer's, if given)."""
        self.send(Calls.delete_frequency_table(name, model))

    def calibrate(self, model: str, examples: list[dict[str, Any]], **options: Any) -> Calibration:
        """Fit detection thresholds from labelled examples, as heads take them ({"text" | "messages" | "record_id",
        "label": 0 | 1}, 1 machine-written), or texts labelled "human" | "machine"."""
        return self.send(Calls.calibrate(model, examples, **options))

    def calibration(self, calibration_id: str) -> Calibration:
        return self.send(Calls.calibration(calibration_id))

    def calibrations(self) -> CalibrationList:
        """This key's calibrations, newest first."""
        return self.send(Calls.calibrations())

    def delete_calibration(self, calibration_id: str) -> None:
        self.send(Calls.delete_calibration(calibration_id))

    def byte_level(self, model: str, text: str, **options: Any) -> BytesResponse:
        """POST /v1/bytes: each byte's exact log-probability (options: mode, max_states, distributions)."""
        return self.send(Calls.byte_level(model, text, **options))

    def attribution(self, positions: list[int], **body: Any) -> AttributionResponse:
        """POST /v1/analysis/attribution: importances of the context tokens for each target position."""
        return self.send(Calls.attribution(positions, body))

    def consistency(self, model: str, **body: Any) -> ConsistencyResponse:
        """POST /v1/analysis/consistency: n sampled answers, their similarities and the consistency methods."""
        return self.send(Calls.consistency(model, body))

    def train_head(
        self, name: str, kind: str, model: str, family: str, examples: list[dict[str, Any]], **options: Any
    ) -> Head:
        """POST /v1/heads: starts training (answers at once, status "scoring" or "queued"); see wait_head."""
        return self.send(Calls.train_head(name, kind, model, family, examples, **options))

    def head(self, head_id: str) -> Head:
        return self.send(Calls.head(head_id))

    def heads(self) -> HeadList:
        return self.send(Calls.heads())

    def delete_head(self, head_id: str) -> None:
        self.send(Calls.delete_head(head_id))

    def wait_head(self, head_id: str, poll_s: float = 0.5, timeout_s: float | None = None) -> Head:
        """Poll until the head has succeeded or failed."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while (head := self.head(head_id)).status not in HEAD_FINISHED:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"head {head_id} is still {head.status}")
            time.sleep(poll_s)
        return head

    def decode(self, prompt: str, **body: Any) -> DecodeResponse:
        return self.send(Calls.decode(prompt, body))

    def completions(self, **body: Any) -> dict[str, Any]:
        return self.send(Calls.completions(body))

    def chat_completions(self, **body: Any) -> dict[str, Any]:
        return self.send(Calls.chat_completions(body))

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[ServerEvent]:
        """POST with `stream: true`; the server-sent events as they arrive."""
        with self.http.stream("POST", path, json=_stream_body(body)) as response:
            if response.status_code >= 400:
                response.read()
                _check(response)
            parser = SseParser()
            for line in response.iter_lines():
                yield from parser.feed(line)
                if parser.done:
                    return

    def decode_stream(self, prompt: str, **body: Any) -> Iterator[ServerEvent]:
        """Contrastive decoding step by step: `step` events, then `done` (the whole answer) or `error`."""
        return self.stream("/v1/decode/contrastive", {"prompt": prompt, **body})

    def completions_stream(self, **body: Any) -> Iterator[dict[str, Any]]:
        """OpenAI completion chunks (plain dicts) until [DONE]."""
        return (event.data for event in self.stream("/v1/completions", body))

    def chat_completions_stream(self, **body: Any) -> Iterator[dict[str, Any]]:
        return (event.data for event in self.stream("/v1/chat/completions", body))

    def create_batch(self, model: str, inputs: list[dict[str, Any]], **options: Any) -> Batch:
        return self.send(Calls.create_batch(model, inputs, **options))

    def batch(self, batch_id: str) -> Batch:
        return self.send(Calls.batch(batch_id))

    def batches(self, limit: int = 20) -> BatchList:
        """This key's batches, newest first."""
        return self.send(Calls.batches(limit))

    def cancel_batch(self, batch_id: str) -> Batch:
        return self.send(Calls.cancel_batch(batch_id))

    def delete_batch(self, batch_id: str) -> None:
        """Stop the batch if it runs and remove it with its results."""
        self.send(Calls.delete_batch(batch_id))

    def batch_results(self, batch_id: str) -> list[dict[str, Any]]:
        return self.send(Calls.batch_results(batch_id))

    def wait_batch(
        self,
        batch_id: str,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
        on_status: Callable[[Batch], object] | None = None,
    ) -> Batch:
        """Poll until the batch is completed or cancelled; `on_status` sees every status read (a progress bar)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            status = self.batch(batch_id)
            if on_status is not None:
                on_status(status)
            if status.status in FINISHED:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} is still {status.status}")
            time.sleep(poll_s)


class AsyncClient:
    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 300.0
    ) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, headers=_headers(api_key), timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def send(self, call: Call[T]) -> T:
        response = await self.http.request(call.method, call.path, json=call.json, params=call.params)
        return call.parse(response if call.path == "/readyz" else _check(response))

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        return await self.send(Calls.post(path, body))

    async def ready(self) -> bool:
        return await self.send(Calls.ready())

    async def models(self) -> ModelList:
        return await self.send(Calls.models())

    async def score(
        self,
        model: str,
        text: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        top_logprobs: int | None = None,
        retain: Retain | None = None,
        layers: list[int] | Literal["all"] | None = None,
    ) -> ScoreResponse:
        """`layers`: hidden_states indices (or "all") whose states the record keeps too (export: /hidden?layer=)."""
        return await self.send(Calls.score(model, text, messages, top_logprobs, retain, layers))

    async def generate(
        self, model: str, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **sampling: Any
    ) -> GenerateResponse:
        return await self.send(Calls.generate(model, prompt, messages, **sampling))

    async def record(self, record_id: str, top_logprobs: int | None = None) -> RecordResponse:
        return await self.send(Calls.record(record_id, top_logprobs))

    async def logprobs(
        self, record_id: str, start: int = 1, stop: int | None = None, upgrade: bool = False
    ) -> np.ndarray:
        return await self.send(Calls.logprobs(record_id, start, stop, upgrade))

    async def analyze(self, family: Family, **body: Any) -> AnalysisResponse:
        return await self.send(Calls.analyze(family, body))

    async def methods(self) -> list[MethodInfo]:
        return await self.send(Calls.methods())

    async def put_frequency_table(self, name: str, model: str, texts: list[str]) -> StoredFrequencyTable:
        return await self.send(Calls.put_frequency_table(name, model, texts))

    async def frequency_tables(self) -> FrequencyTableList:
        return await self.send(Calls.frequency_tables())

    async def frequency_table(self, name: str, model: str | None = None) -> FrequencyTable:
        return await self.send(Calls.frequency_table(name, model))

    async def delete_frequency_table(self, name: str, model: str | None = None) -> None:
        await self.send(Calls.delete_frequency_table(name, model))

    async def calibrate(self, model: str, examples: list[dict[str, Any]], **options: Any) -> Calibration:
        return await self.send(Calls.calibrate(model, examples, **options))

    async def calibration(self, calibration_id: str) -> Calibration:
        return await self.send(Calls.calibration(calibration_id))

    async def calibrations(self) -> CalibrationList:
        return await self.send(Calls.calibrations())

    async def delete_calibration(self, calibration_id: str) -> None:
        await self.send(Calls.delete_calibration(calibration_id))

    async def byte_level(self, model: str, text: str, **options: Any) -> BytesResponse:
        return await self.send(Calls.byte_level(model, text, **options))

    async def attribution(self, positions: list[int], **body: Any) -> AttributionResponse:
        return await self.send(Calls.attribution(positions, body))

    async def consistency(self, model: str, **body: Any) -> ConsistencyResponse:
        return await self.send(Calls.consistency(model, body))

    async def train_head(
        self, name: str, kind: str, model: str, family: str, examples: list[dict[str, Any]], **options: Any
    ) -> Head:
        return await self.send(Calls.train_head(name, kind, model, family, examples, **options))

    async def head(self, head_id: str) -> Head:
        return await self.send(Calls.head(head_id))

    async def heads(self) -> HeadList:
        return await self.send(Calls.heads())

    async def delete_head(self, head_id: str) -> None:
        await self.send(Calls.delete_head(head_id))

    async def wait_head(self, head_id: str, poll_s: float = 0.5, timeout_s: float | None = None) -> Head:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while (head := await self.head(head_id)).status not in HEAD_FINISHED:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"head {head_id} is still {head.status}")
            await asyncio.sleep(poll_s)
        return head

    async def decode(self, prompt: str, **body: Any) -> DecodeResponse:
        return await self.send(Calls.decode(prompt, body))

    async def completions(self, **body: Any) -> dict[str, Any]:
        return await self.send(Calls.completions(body))

    async def chat_completions(self, **body: Any) -> dict[str, Any]:
        return await self.send(Calls.chat_completions(body))

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[ServerEvent]:
        """POST with `stream: true`; the server-sent events as they arrive."""
        async with self.http.stream("POST", path, json=_stream_body(body)) as response:
            if response.status_code >= 400:
                await response.aread()
                _check(response)
            parser = SseParser()
            async for line in response.aiter_lines():
                for event in parser.feed(line):
                    yield event
                if parser.done:
                    return

    def decode_stream(self, prompt: str, **body: Any) -> AsyncIterator[ServerEvent]:
        return self.stream("/v1/decode/contrastive", {"prompt": prompt, **body})

    async def completions_stream(self, **body: Any) -> AsyncIterator[dict[str, Any]]:
        async for event in self.stream("/v1/completions", body):
            yield event.data

    async def chat_completions_stream(self, **body: Any) -> AsyncIterator[dict[str, Any]]:
        async for event in self.stream("/v1/chat/completions", body):
            yield event.data

    async def create_batch(self, model: str, inputs: list[dict[str, Any]], **options: Any) -> Batch:
        return await self.send(Calls.create_batch(model, inputs, **options))

    async def batch(self, batch_id: str) -> Batch:
        return await self.send(Calls.batch(batch_id))

    async def batches(self, limit: int = 20) -> BatchList:
        return await self.send(Calls.batches(limit))

    async def cancel_batch(self, batch_id: str) -> Batch:
        return await self.send(Calls.cancel_batch(batch_id))

    async def delete_batch(self, batch_id: str) -> None:
        await self.send(Calls.delete_batch(batch_id))

    async def batch_results(self, batch_id: str) -> list[dict[str, Any]]:
        return await self.send(Calls.batch_results(batch_id))

    async def wait_batch(
        self,
        batch_id: str,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
        on_status: Callable[[Batch], object] | None = None,
    ) -> Batch:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            status = await self.batch(batch_id)
            if on_status is not None:
                on_status(status)
            if status.status in FINISHED:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} is still {status.status}")
            await asyncio.sleep(poll_s)
