"""The Python client (sync and async) and the CLI's JSONL verbs against the running service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.launcher.local_service import ROOT
from logprobe.client import AsyncClient, Client, LogprobeError
from tests.conftest import MODEL


def test_sync_client_covers_score_records_rows_analyses_and_errors(service: str) -> None:
    with Client(service, api_key="key-alpha") as lp:
        assert any(m.id == MODEL and m.ready for m in lp.models().data)
        scored = lp.score(MODEL, text="A client reads numpy rows.", top_logprobs=2)
        assert scored.tokens[1].logprob is not None and len(scored.tokens[1].top_logprobs or []) == 2
        rows = lp.logprobs(scored.record_id, start=1, stop=3)
        assert rows.shape == (2, 49152) and rows.dtype == np.float32
        assert rows[0, scored.tokens[1].id] == pytest.approx(scored.tokens[1].logprob, abs=1e-5)
        assert lp.record(scored.record_id).n_tokens == scored.n_tokens
        analysis = lp.analyze("uncertainty", record_id=scored.record_id, methods=["perplexity"])
        assert analysis.sequence["perplexity"] is not None and analysis.sequence["perplexity"] > 1
        generated = lp.generate(MODEL, prompt="Hello", max_tokens=3, temperature=0)
        assert generated.usage.completion_tokens == len(generated.tokens)
        with pytest.raises(LogprobeError) as err:
            lp.score("no-such-model", text="x")
        assert err.value.status == 404 and err.value.code == "model_not_found"


def test_sync_client_covers_bytes_attribution_and_heads(service: str) -> None:
    with Client(service, api_key="key-alpha") as lp:
        byte_level = lp.byte_level(MODEL, "Hi there", distributions=True)
        assert byte_level.n_bytes == 8 and [b.byte for b in byte_level.bytes] == list(b"Hi there")
        assert byte_level.logprob == pytest.approx(sum(b.logprob or 0.0 for b in byte_level.bytes), abs=1e-9)
        scored = lp.score(MODEL, text="The capital of France is Paris.")
        last = scored.n_tokens - 1
        attributed = lp.attribution([last], record_id=scored.record_id, method="occlusion")
        assert attributed.targets[0].position == last and len(attributed.targets[0].importance) == last
        texts = [f"A short note number {i} about the weather." for i in range(6)]
        texts += [f"Buy {i} cheap watches now, best offer, click here!" for i in range(6)]
        examples = [{"text": t, "label": int(i >= 6)} for i, t in enumerate(texts)]
        started = lp.train_head("client_probe", "probe", MODEL, "detect", examples, seed=1)
        head = lp.wait_head(started.id, timeout_s=600)
        assert head.status == "succeeded" and head.examples == {"0": 6, "1": 6}
        assert started.id in [h.id for h in lp.heads().data]
        lp.delete_head(started.id)
        with pytest.raises(LogprobeError) as err:
            lp.head(started.id)
        assert err.value.status == 404


async def test_async_client(service: str) -> None:
    async with AsyncClient(service, api_key="key-alpha") as lp:
        scored = await lp.score(MODEL, text="An async client.")
        rows = await lp.logprobs(scored.record_id)
        assert rows.shape == (scored.n_tokens - 1, 49152)
        decoded = await lp.decode(
            "Name a colour.", preset={"name": "prompt_contrast", "model": MODEL}, max_tokens=3, temperature=0
        )
        assert len(decoded.steps) >= 1


def test_sync_client_covers_batches_calibrations_tables_methods_and_openai(service: str) -> None:
    with Client(service, api_key="key-alpha") as lp:
        assert lp.ready()
        assert any(m.name == "min_k" for m in lp.methods())
        batch = lp.create_batch(
            MODEL,
            [{"text": "A batch from the client.", "custom_id": "a"}, {"text": "And a second one.", "custom_id": "b"}],
            analyses=[{"family": "uncertainty", "methods": ["perplexity"]}],
        )
        done = lp.wait_batch(batch.id, poll_s=0.2, timeout_s=120)
        assert (done.status, done.completed, done.failed) == ("completed", 2, 0)
        lines = lp.batch_results(batch.id)
        assert [line["custom_id"] for line in lines] == ["a", "b"]
        assert lines[0]["results"]["uncertainty"]["sequence"]["perplexity"] > 1
        with pytest.raises(LogprobeError) as err:
            lp.cancel_batch(batch.id)
        assert err.value.code == "batch_finished"
        assert lp.batches(limit=1).data[0].id == batch.id
        lp.delete_batch(batch.id)
        assert batch.id not in {b.id for b in lp.batches(limit=100).data}

        table = lp.put_frequency_table("client-table", MODEL, ["the cat sat", "the dog ran"])
        assert table.texts == 2 and table.tokens > 4 and table.expires_at > table.created_at
        listed = lp.frequency_tables().data
        assert listed[0].name == "default" and listed[0].packaged
        assert lp.frequency_table("client-table", model=MODEL).tokens == table.tokens
        lp.delete_frequency_table("client-table")
        with pytest.raises(LogprobeError) as err:
            lp.frequency_table("client-table")
        assert err.value.status == 404 and err.value.code == "frequency_table_not_found"

        labelled = [{"text": f"Human note number {i}, scribbled fast.", "label": "human"} for i in range(2)] + [
            {"text": f"As an AI language model, I can help with item {i}.", "label": "machine"} for i in range(2)
        ]
        calibration = lp.calibrate(MODEL, labelled, methods=["log_likelihood"])
        assert lp.calibration(calibration.calibration_id).methods.keys() == {"log_likelihood"}
        assert lp.calibrations().data[0].calibration_id == calibration.calibration_id
        lp.delete_calibration(calibration.calibration_id)
        with pytest.raises(LogprobeError) as err:
            lp.calibration(calibration.calibration_id)
        assert err.value.code == "calibration_not_found"
        completion = lp.completions(model=MODEL, prompt="The capital of France is", max_tokens=2, logprobs=2)
        assert len(completion["choices"][0]["logprobs"]["tokens"]) == 2
        chat = lp.chat_completions(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        assert chat["choices"][0]["message"]["role"] == "assistant"


async def test_async_client_batches(service: str) -> None:
    async with AsyncClient(service, api_key="key-alpha") as lp:
        assert await lp.ready()
        batch = await lp.create_batch(MODEL, [{"text": "An async batch."}])
        assert (await lp.wait_batch(batch.id, poll_s=0.2, timeout_s=120)).completed == 1
        (line,) = await lp.batch_results(batch.id)
        assert line["record_id"] and (await lp.record(line["record_id"])).n_tokens > 2
        assert (await lp.batches(limit=1)).data[0].id == batch.id
        await lp.delete_batch(batch.id)
        with pytest.raises(LogprobeError) as err:
            await lp.batch(batch.id)
        assert err.value.code == "batch_not_found"
        assert (await lp.frequency_tables()).data[0].packaged
        assert isinstance((await lp.calibrations()).data, list)


def cli(service: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`logprobe ARGS` as a user runs it, against the service as tenant alpha."""
    env = {**os.environ, "LOGPROBE_URL": service, "LOGPROBE_API_KEY": "key-alpha", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "app.launcher.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_cli_scores_a_jsonl_file_of_100_texts(service: str, tmp_path: Path) -> None:
    source = tmp_path / "texts.jsonl"
    texts = [f"Line number {i} of the batch says something small." for i in range(97)]
    source.write_text(
        "".join(json.dumps({"text": t, "custom_id": f"s{i}"}) + "\n" for i, t in enumerate(texts))
        + "{not json at all\n"
        + "[1, 2]\n\n"
        + json.dumps({"text": "", "model": MODEL, "custom_id": "empty"})
        + "\n"
    )  # three bad lines among them, and a blank one (skipped)
    output = tmp_path / "scores.jsonl"
    done = cli(service, "score", str(source), "-o", str(output), "--concurrency", "4")
    assert done.returncode == 1, done.stderr  # some lines failed; every line still has its answer
    assert "Traceback" not in done.stderr
    answers = [json.loads(line) for line in output.read_text().splitlines()]
    # `line` is the file's own line number (#30 item 21): from 1, the blank line counted
    assert [a["line"] for a in answers] == [*range(1, 100), 101]
    for i, (text, answer) in enumerate(zip(texts, answers, strict=False)):
        assert "".join(t["text"] for t in answer["tokens"]) == text and answer["model"] == MODEL
        assert answer["custom_id"] == f"s{i}"
    assert [a["error"]["code"] for a in answers[97:]] == ["invalid_json", "invalid_json", "empty_text"]
    assert answers[-1]["custom_id"] == "empty" and "tokens" not in answers[-1]
    assert "100%" in done.stderr or "/v1/score" in done.stderr  # the progress bar went to stderr

    clean = tmp_path / "clean.jsonl"
    clean.write_text(json.dumps({"text": texts[0]}) + "\n")
    assert cli(service, "score", str(clean)).returncode == 0


def test_cli_says_in_one_line_when_the_service_or_the_file_is_not_there(tmp_path: Path) -> None:
    source = tmp_path / "texts.jsonl"
    source.write_text(json.dumps({"text": "Nobody listens."}) + "\n")
    env = {"LOGPROBE_URL": "http://127.0.0.1:9"}  # the discard port: nothing answers
    for verb in (["score", str(source)], ["batch", str(source)], ["score", str(tmp_path / "missing.jsonl")]):
        done = subprocess.run(
            [sys.executable, "-m", "app.launcher.cli", *verb],
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, (verb, done.stderr)
        assert "Traceback" not in done.stderr and done.stdout == ""
        (message,) = done.stderr.strip().splitlines()
        assert message.startswith("logprobe: ")


def test_cli_batch_runs_analyses_server_side_and_writes_the_results(service: str, tmp_path: Path) -> None:
    source = tmp_path / "inputs.jsonl"
    texts = [f"The ferry to island {i} leaves at dawn when the sea is calm." for i in range(12)]
    source.write_text("".join(json.dumps({"text": t, "custom_id": f"c{i}"}) + "\n" for i, t in enumerate(texts)))
    output = tmp_path / "results.jsonl"
    analyses = ["--analysis", "uncertainty:mean_entropy,perplexity"]
    analyses += ["--analysis", json.dumps({"family": "detect", "methods": ["log_rank"]})]
    done = cli(service, "batch", str(source), "-o", str(output), "--poll", "0.2", *analyses)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [f"c{i}" for i in range(12)]
    with Client(service, api_key="key-alpha") as lp:
        for text, line in zip(texts, lines, strict=True):
            direct = lp.analyze("uncertainty", model=MODEL, text=text, methods=["mean_entropy", "perplexity"])
            assert line["record_id"] == direct.record_id and line["error"] is None
            assert line["results"]["uncertainty"]["sequence"] == pytest.approx(direct.sequence, rel=1e-9)
            assert set(line["results"]["detect"]["sequence"]) == {"log_rank"}
    assert "batch" in done.stderr  # the progress bar went to stderr

    bad = cli(service, "batch", str(source), "--analysis", "uncertainty:no_such_method")
    assert bad.returncode == 1 and "422" in bad.stderr and "Traceback" not in bad.stderr
    assert {json.loads(line)["error"]["code"] for line in bad.stdout.splitlines()} == {"unknown_method"}


def test_cli_batch_takes_score_lines_and_answers_every_line_in_order(service: str, tmp_path: Path) -> None:
    """Lines written for `logprobe score` (model, custom_id) run as batches, one per model; a line a batch cannot
    take gets its error in its place and the others still run."""
    source = tmp_path / "mixed.jsonl"
    rows: list[str] = [
        json.dumps({"text": "A plain line.", "custom_id": "plain"}),
        json.dumps({"text": "A line that names the model.", "model": MODEL, "custom_id": "named"}),
        "this is not json",
        json.dumps({"text": "Wants alternatives.", "top_logprobs": 3}),
        json.dumps({"text": "Another model.", "model": "no-such-model", "custom_id": "ghost"}),
        json.dumps({"text": "x", "messages": [{"role": "user", "content": "y"}]}),
        json.dumps({"messages": [{"role": "user", "content": "Hello there"}], "custom_id": "chat"}),
    ]
    source.write_text("\n".join(rows) + "\n")
    output = tmp_path / "out.jsonl"
    done = cli(service, "batch", str(source), "-o", str(output), "--poll", "0.2", "--analysis", "uncertainty")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["line"] for line in lines] == list(range(1, 8)) and [line["index"] for line in lines] == list(range(7))
    codes = [line["error"]["code"] if line["error"] else None for line in lines]
    assert codes == [None, None, "invalid_json", "unsupported_field", "model_not_found", "invalid_request", None]
    assert [lines[i]["custom_id"] for i in (0, 1, 4, 6)] == ["plain", "named", "ghost", "chat"]
    for i in (0, 1, 6):
        assert lines[i]["record_id"] and lines[i]["results"]["uncertainty"]["sequence"]["perplexity"] > 1


DECODE = {"preset": {"name": "prompt_contrast", "model": MODEL, "alpha": 0.5}, "max_tokens": 6, "temperature": 0}


def test_sync_client_streams_decoding_and_completions(service: str) -> None:
    with Client(service, api_key="key-alpha") as lp:
        whole = lp.decode("Name a colour.", **DECODE)
        events = list(lp.decode_stream("Name a colour.", **DECODE))
        assert [e.event for e in events] == ["step"] * len(whole.steps) + ["done"]
        assert [e.data["id"] for e in events[:-1]] == [s.id for s in whole.steps]
        assert events[-1].data["text"] == whole.text and events[-1].data["record_id"] == whole.record_id

        body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 5, "temperature": 0}
        chunks = list(lp.completions_stream(**body))
        assert "".join(c["choices"][0]["text"] for c in chunks) == lp.completions(**body)["choices"][0]["text"]
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0}
        deltas = [c["choices"][0]["delta"].get("content") or "" for c in lp.chat_completions_stream(**chat)]
        assert "".join(deltas) == lp.chat_completions(**chat)["choices"][0]["message"]["content"]
        with pytest.raises(LogprobeError) as err:
            list(lp.decode_stream("Name a colour.", preset={"name": "ed", "base": MODEL}))
        assert err.value.status == 422 and err.value.code == "invalid_preset"


async def test_async_client_streams(service: str) -> None:
    async with AsyncClient(service, api_key="key-alpha") as lp:
        whole = await lp.decode("Name a colour.", **DECODE)
        events = [e async for e in lp.decode_stream("Name a colour.", **DECODE)]
        assert [e.event for e in events][-1] == "done" and events[-1].data["text"] == whole.text
        body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 5, "temperature": 0}
        text = "".join([c["choices"][0]["text"] async for c in lp.completions_stream(**body)])
        assert text == (await lp.completions(**body))["choices"][0]["text"]
