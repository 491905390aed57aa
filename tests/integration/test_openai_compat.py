"""The official `openai` package, pointed at the running service: completions, chats, streams, logprobs and
top_logprobs; answers validate against the package's own response types."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI
from openai.types import Completion
from openai.types.chat import ChatCompletion

from tests.conftest import MODEL

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def client(service: str) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{service}/v1", api_key="key-alpha", max_retries=0, timeout=300) as c:
        yield c


def test_chat_completion_with_logprobs(client: OpenAI, alpha: httpx.Client) -> None:
    answer = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        temperature=0,
        max_tokens=24,  # type: ignore[arg-type]
        logprobs=True,
        top_logprobs=3,
    )
    choice = answer.choices[0]
    assert "Paris" in (choice.message.content or "") and choice.finish_reason in ("stop", "length")
    content = choice.logprobs.content  # type: ignore[union-attr]
    assert content and all(len(t.top_logprobs) == 3 for t in content)
    assert all(t.top_logprobs[0].logprob >= t.logprob - 1e-6 for t in content)  # greedy: the top token was chosen
    assert answer.usage and answer.usage.completion_tokens == len(content)
    raw = alpha.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": QUESTION,
            "temperature": 0,
            "max_tokens": 24,
            "logprobs": True,
            "top_logprobs": 3,
        },
    ).json()
    ChatCompletion.model_validate(raw, strict=False)
    record = alpha.get(f"/v1/records/{raw['record_id']}").json()  # the extension: the stored record
    assert record["kind"] == "generate"


def test_chat_stream_matches_the_whole_answer(client: OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=24)  # type: ignore[arg-type]
    stream = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        temperature=0,
        max_tokens=24,  # type: ignore[arg-type]
        stream=True,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_completion_with_echo_and_logprobs(client: OpenAI, alpha: httpx.Client) -> None:
    prompt = "The capital of France is"
    answer = client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0, logprobs=2, echo=True)
    choice = answer.choices[0]
    assert choice.text.startswith(prompt)
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.token_logprobs and logprobs.tokens and logprobs.top_logprobs
    assert logprobs.token_logprobs[0] is None  # the first prompt token has no prediction
    assert "".join(logprobs.tokens) == choice.text
    scored = alpha.post("/v1/score", json={"model": MODEL, "text": prompt}).json()
    n_prompt = scored["n_tokens"]
    assert logprobs.token_logprobs[1:n_prompt] == pytest.approx([t["logprob"] for t in scored["tokens"][1:]])
    assert all(len(top or {}) <= 3 for top in logprobs.top_logprobs)  # the chosen token and the top 2
    raw = alpha.post(
        "/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 5, "temperature": 0, "logprobs": 2}
    ).json()
    Completion.model_validate(raw)
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0, stream=True)
    )
    assert streamed == raw["choices"][0]["text"]


def test_openai_error_envelope(client: OpenAI) -> None:
    import openai

    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)  # type: ignore[arg-type]
    assert err.value.code == "model_not_found"


def test_openai_refusals_arrive_as_the_package_s_errors(client: OpenAI) -> None:
    import openai

    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.chat.completions.create(model=MODEL, messages=QUESTION, top_logprobs=3, max_tokens=2)  # type: ignore[arg-type]
    assert (err.value.code, err.value.param) == ("logprobs_required", "top_logprobs")
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.chat.completions.create(model=MODEL, messages=[{"role": "wizard", "content": "Hi"}])  # type: ignore[list-item]
    assert (err.value.code, err.value.param) == ("invalid_role", "messages.0.role")
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.completions.create(model=MODEL, prompt="x", logprobs=101)
    assert err.value.param == "logprobs"


def test_chat_content_parts_read_as_their_joined_text(client: OpenAI) -> None:
    import openai

    def greedy(messages: list[dict[str, object]]) -> ChatCompletion:
        return client.chat.completions.create(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
            temperature=0,
            max_tokens=8,
            logprobs=True,
        )

    parts = [{"type": "text", "text": "What is the capital"}, {"type": "text", "text": "of France?"}]
    joined = greedy([{"role": "user", "content": "What is the capital\nof France?"}])
    from_parts = greedy([{"role": "user", "content": parts}])
    assert from_parts.choices[0].message.content == joined.choices[0].message.content
    logprobs = [t.logprob for t in from_parts.choices[0].logprobs.content]  # type: ignore[union-attr]
    assert logprobs == [t.logprob for t in joined.choices[0].logprobs.content]  # type: ignore[union-attr]
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    with pytest.raises(openai.UnprocessableEntityError) as err:
        greedy([{"role": "user", "content": [parts[0], image]}])
    assert (err.value.code, err.value.param) == ("unsupported_content", "messages.0.content")
