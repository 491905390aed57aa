"""The OpenAI and vLLM APIs in full, through the official `openai` package against the running service: every
prompt shape, n, best_of, echo with max_tokens 0, streams with logprobs, each honoured sampling field against a
float64 reference of its formula over transformers' own logits, vLLM's extensions and its tokenizer routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import torch
from openai import OpenAI
from openai.types import Completion
from openai.types.chat import ChatCompletion

from tests.conftest import MODEL

PROMPT = "The capital of France is"
REPEAT = "one two three one two three one two three one two"
TEXTS = ["Water boils at 100 degrees", "The quick brown fox jumps over the lazy dog"]


@pytest.fixture
def client(service: str) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{service}/v1", api_key="key-alpha", max_retries=0, timeout=300) as c:
        yield c


def _logprobs(hf: tuple[Any, Any], ids: list[int]) -> np.ndarray:
    model, _ = hf
    with torch.inference_mode():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1).numpy()


def _ids(hf: tuple[Any, Any], text: str) -> list[int]:
    return list(hf[1](text).input_ids)


def _penalised(logits: np.ndarray, prompt: list[int], completion: list[int], s: dict[str, Any]) -> np.ndarray:
    """vLLM's formula in float64: bias, repetition (prompt + completion), frequency and presence (completion)."""
    x = logits.copy()
    for token, bias in s.get("logit_bias", {}).items():
        x[int(token)] += bias
    counts = np.bincount(np.asarray(completion, dtype=np.int64), minlength=len(x)).astype(np.float64)
    rep = np.where((counts > 0) | np.isin(np.arange(len(x)), prompt), s.get("repetition_penalty", 1.0), 1.0)
    x = np.where(x > 0, x / rep, x * rep)
    return x - s.get("frequency_penalty", 0.0) * counts - s.get("presence_penalty", 0.0) * (counts > 0)


def _greedy_reference(hf: tuple[Any, Any], prompt: list[int], steps: int, s: dict[str, Any]) -> list[int]:
    model, _ = hf
    completion: list[int] = []
    for _ in range(steps):
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prompt + completion])).logits[0, -1].double().numpy()
        completion.append(int(np.argmax(_penalised(logits, prompt, completion, s))))
    return completion


def _token_ids(choice: Any) -> list[int]:
    return [int(t.removeprefix("token_id:")) for t in choice.logprobs.tokens]


# ------------------------------------------------------------------ prompt shapes, n, echo


def test_every_prompt_shape_scores_as_transformers_does(client: OpenAI, hf_smollm2: tuple[Any, Any]) -> None:
    token_lists = [_ids(hf_smollm2, t) for t in TEXTS]
    shapes: list[Any] = [TEXTS[0], TEXTS, token_lists[0], token_lists]
    for prompt in shapes:
        answer = client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=1, temperature=0
        )
        expected = [0] if prompt in (TEXTS[0], token_lists[0]) else [0, 1]
        assert [c.index for c in answer.choices] == list(range(len(expected)))
        for choice, i in zip(answer.choices, expected, strict=True):
            ids = token_lists[i]
            reference = _logprobs(hf_smollm2, ids)
            want = [reference[t - 1, ids[t]] for t in range(1, len(ids))]
            assert choice.text == TEXTS[i]
            lp = choice.logprobs
            assert lp is not None and lp.token_logprobs is not None and lp.top_logprobs is not None
            assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(ids)
            np.testing.assert_allclose(lp.token_logprobs[1:], want, atol=1e-3)
            # the top alternative of each position is transformers' argmax, with its logprob
            assert max(lp.top_logprobs[1].values()) == pytest.approx(reference[0].max(), abs=1e-3)
            assert choice.model_extra and len(choice.model_extra["record_id"]) == 32
        assert answer.usage is not None and answer.usage.prompt_tokens == sum(len(token_lists[i]) for i in expected)


def test_choices_are_prompt_major_with_n_and_seeds(client: OpenAI, hf_smollm2: tuple[Any, Any]) -> None:
    prompts = [_ids(hf_smollm2, PROMPT), _ids(hf_smollm2, TEXTS[0])]
    kwargs: dict[str, Any] = {"model": MODEL, "max_tokens": 6, "temperature": 1.0, "seed": 5}
    answer = client.completions.create(prompt=prompts, n=3, logprobs=0, **kwargs)
    assert [c.index for c in answer.choices] == list(range(6))
    texts = [c.text for c in answer.choices]
    assert len(set(texts[:3])) > 1  # three samples, not one three times
    for j in range(3):  # sample j of a request draws with seed + j, as vLLM's
        alone = client.completions.create(prompt=prompts[1], **{**kwargs, "seed": 5 + j})
        assert texts[3 + j] == alone.choices[0].text
    records = {c.model_extra["record_id"] for c in answer.choices if c.model_extra}
    assert len(records) == len(set(texts))  # each choice keeps its own record
    assert answer.usage is not None and answer.usage.completion_tokens == sum(
        len(c.logprobs.tokens or []) for c in answer.choices if c.logprobs
    )


def test_best_of_returns_the_most_likely_candidate(client: OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": MODEL, "prompt": PROMPT, "max_tokens": 5, "temperature": 1.0, "seed": 11}
    candidates = client.completions.create(n=4, logprobs=0, **kwargs).choices
    scores = [sum(c.logprobs.token_logprobs or []) for c in candidates if c.logprobs]
    picked = client.completions.create(n=1, best_of=4, **kwargs).choices
    assert len(picked) == 1 and picked[0].text == candidates[int(np.argmax(scores))].text
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.completions.create(n=3, best_of=2, **kwargs)
    assert err.value.param == "best_of"


def test_stream_carries_logprobs_and_the_echoed_prompt(client: OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "temperature": 0, "logprobs": 2}
    whole = client.completions.create(echo=True, **kwargs).choices[0]
    chunks = list(client.completions.create(echo=True, stream=True, **kwargs))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.text
    assert chunks[0].choices[0].text == PROMPT  # the prompt comes first, with its logprobs
    streamed = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    tokens = [t for lp in streamed for t in lp.tokens or []]
    logprobs = [v for lp in streamed for v in lp.token_logprobs or []]
    assert whole.logprobs is not None and tokens == whole.logprobs.tokens
    assert logprobs[0] is None and whole.logprobs.token_logprobs is not None
    # the streamed prompt's logprobs come from the prompt's record, the whole answer's from prompt + completion's
    np.testing.assert_allclose(logprobs[1:], whole.logprobs.token_logprobs[1:], atol=1e-4)
    offsets = [o for lp in streamed for o in lp.text_offset or []]
    assert offsets == whole.logprobs.text_offset
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert final and final[-1].model_extra and len(final[-1].model_extra["record_id"]) == 32
    usage = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))[-1]
    assert usage.choices == [] and usage.usage is not None and usage.usage.completion_tokens == 8


# ------------------------------------------------------------------ sampling fields


def test_logit_bias_removes_a_token(client: OpenAI, hf_smollm2: tuple[Any, Any]) -> None:
    plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0, logprobs=1)
    assert plain.choices[0].text.startswith(" Paris")
    paris = _ids(hf_smollm2, " Paris")[0]
    biased = client.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=3,
        temperature=0,
        logprobs=1,
        logit_bias={str(paris): -100},
        extra_body={"return_tokens_as_token_ids": True},
    )
    choice = biased.choices[0]
    assert paris not in _token_ids(choice) and "Paris" not in choice.text
    expected = _greedy_reference(hf_smollm2, _ids(hf_smollm2, PROMPT), 3, {"logit_bias": {paris: -100.0}})
    assert _token_ids(choice) == expected
    # the reported logprobs stay the model's own (vLLM's raw_logprobs), the bias changed only the choice
    assert choice.logprobs is not None and choice.logprobs.token_logprobs is not None
    ref = _logprobs(hf_smollm2, _ids(hf_smollm2, PROMPT))[-1]
    assert choice.logprobs.token_logprobs[0] == pytest.approx(ref[expected[0]], abs=1e-3)


@pytest.mark.parametrize(
    "fields",
    [
        {"frequency_penalty": 1.5},
        {"presence_penalty": 2.0},
        {"repetition_penalty": 1.8},
        {"frequency_penalty": 0.6, "presence_penalty": 0.8, "repetition_penalty": 1.2},
    ],
)
def test_penalties_follow_vllms_formula(client: OpenAI, hf_smollm2: tuple[Any, Any], fields: dict[str, Any]) -> None:
    prompt = _ids(hf_smollm2, REPEAT)
    steps = 10

    def greedy(extra: dict[str, Any]) -> list[int]:
        answer = client.completions.create(
            model=MODEL,
            prompt=prompt,
            max_tokens=steps,
            temperature=0,
            logprobs=0,
            extra_body={"return_tokens_as_token_ids": True, **extra},
        )
        return _token_ids(answer.choices[0])

    plain, penalised = greedy({}), greedy(fields)
    expected = _greedy_reference(hf_smollm2, prompt, steps, fields)
    assert penalised == expected[: len(penalised)] and len(penalised) >= 3
    assert penalised != plain[: len(penalised)]  # the penalty changed the path


def test_top_k_and_min_p_cut_the_distribution(client: OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": MODEL, "prompt": REPEAT, "max_tokens": 8}
    greedy = client.completions.create(temperature=0, **kwargs).choices[0].text
    for cut in ({"top_k": 1}, {"min_p": 1.0}):  # only the most likely token is left: sampling is greedy
        for seed in (1, 2):
            sampled = client.completions.create(temperature=1.5, seed=seed, extra_body=cut, **kwargs)
            assert sampled.choices[0].text == greedy
    wide = {client.completions.create(temperature=1.5, seed=s, **kwargs).choices[0].text for s in (1, 2, 3)}
    assert wide != {greedy}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"suffix": "x"}, "suffix"),
        ({"use_beam_search": True}, "use_beam_search"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"stop_token_ids": [2]}, "stop_token_ids"),
        ({"prompt_logprobs": -1}, "prompt_logprobs"),
    ],
)
def test_unimplemented_fields_are_refused_by_name(client: OpenAI, fields: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, extra_body=fields)
    assert (err.value.code, err.value.param) == ("unsupported_parameter", param)
    # their neutral values ask for nothing
    client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1, extra_body={"use_beam_search": False})


# ------------------------------------------------------------------ vLLM's extensions


def test_prompt_logprobs_as_vllm_gives_them(alpha: httpx.Client, hf_smollm2: tuple[Any, Any]) -> None:
    ids = _ids(hf_smollm2, TEXTS[1])
    answer = alpha.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 3},
    ).json()
    Completion.model_validate(answer)
    entries = answer["choices"][0]["prompt_logprobs"]
    reference = _logprobs(hf_smollm2, ids)
    assert entries[0] is None and len(entries) == len(ids)
    for t in range(1, len(ids)):
        entry = entries[t]
        own = entry[str(ids[t])]
        assert own["logprob"] == pytest.approx(reference[t - 1, ids[t]], abs=1e-3)
        assert own["rank"] == 1 + int((reference[t - 1] > reference[t - 1, ids[t]]).sum())
        top3 = np.argsort(-reference[t - 1])[:3]
        assert {str(i) for i in top3} <= set(entry) and len(entry) in (3, 4)
        assert entry[str(top3[0])]["rank"] == 1


def test_chat_echo_continues_the_final_message(client: OpenAI, alpha: httpx.Client) -> None:
    messages = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is"},
    ]
    answer = client.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=4,
        temperature=0,
        extra_body={"echo": True, "continue_final_message": True, "add_generation_prompt": False},
    )
    content = answer.choices[0].message.content or ""
    assert content.startswith("The capital of France is") and "Paris" in content
    ChatCompletion.model_validate(answer.model_dump())
    tokenized = alpha.post(
        "/tokenize",
        json={"messages": messages, "continue_final_message": True, "add_generation_prompt": False},
    ).json()
    assert answer.usage is not None and answer.usage.prompt_tokens == tokenized["count"]
    rendered = alpha.post("/detokenize", json={"tokens": tokenized["tokens"]}).json()["prompt"]
    assert rendered.endswith("<|im_start|>assistant\nThe capital of France is")  # left open, no end of turn
    refused = alpha.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": messages, "continue_final_message": True, "add_generation_prompt": True},
    )
    assert refused.status_code == 422
    kwargs = alpha.post(
        "/tokenize", json={"messages": messages[:1], "chat_template_kwargs": {"add_generation_prompt": False}}
    ).json()
    assert kwargs["count"] > 0


def test_chat_n_and_logprobs(client: OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=5,
        temperature=1.0,
        seed=3,
        n=2,
        logprobs=True,
        top_logprobs=2,
    )
    assert [c.index for c in answer.choices] == [0, 1]
    for choice in answer.choices:
        assert choice.logprobs is not None and choice.logprobs.content
        assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
        assert choice.model_extra and len(choice.model_extra["record_id"]) == 32


def test_tokenizer_routes_answer_as_vllm(alpha: httpx.Client, hf_smollm2: tuple[Any, Any]) -> None:
    tokenizer = hf_smollm2[1]
    info = alpha.get("/tokenizer_info").json()
    assert info["eos_token"] == tokenizer.eos_token and info["chat_template"]
    plain = alpha.post("/tokenize", json={"prompt": TEXTS[1], "add_special_tokens": False}).json()
    assert plain["tokens"] == tokenizer(TEXTS[1], add_special_tokens=False).input_ids
    assert plain["count"] == len(plain["tokens"]) and plain["max_model_len"] > 0
    strs = alpha.post("/tokenize", json={"prompt": "Hello", "return_token_strs": True}).json()
    assert strs["token_strs"] == tokenizer.convert_ids_to_tokens(strs["tokens"])
    back = alpha.post("/detokenize", json={"tokens": plain["tokens"]}).json()
    assert back == {"prompt": TEXTS[1]}
    assert alpha.get("/version").json()["version"]
    models = alpha.get("/v1/models").json()["data"]
    assert next(m for m in models if m["id"] == MODEL)["max_model_len"] == plain["max_model_len"]
