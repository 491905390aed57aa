"""The gateway's tokenizer and chat templates agree with transformers, which the worker uses."""

from __future__ import annotations

from typing import Any

import pytest

from app.serving.chat_template import ChatTemplateError
from app.serving.text import TextCodec
from workers.contract.cards import ModelCard

TEXTS = [
    "Hello world",
    " leading space",
    "tabs\tand\nnewlines\n\n",
    "emoji 🦊 and 東京 and naïve",
    "<|im_start|>user\nliteral special tokens<|im_end|>",
    "x" * 300,
]
CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ],
]
STRICT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
    "{{ raise_exception('only user and assistant') }}{% endif %}"
    "{% if loop.index > 5 %}{% break %}{% endif %}[{{ m['role'] }}]{{ m['content'] | tojson }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}{{ eos_token }}"
)


@pytest.fixture(scope="module")
def codec(hf_smollm2: tuple[Any, Any]) -> tuple[TextCodec, Any]:
    _, tokenizer = hf_smollm2
    card = ModelCard(
        name="smollm2",
        fingerprint="x",
        backend="hf",
        dtype="float32",
        vocab_size=49152,
        hidden_size=576,
        context_length=8192,
        add_bos=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_ids=[2],
        chat_template=tokenizer.chat_template,
        special_tokens={"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token},
        storage="hidden",
        hidden_dtype="float32",
        rebuild_max_abs_error=0.0,
        max_new_tokens=16,
    )
    return TextCodec(card, tokenizer.backend_tokenizer.to_str()), tokenizer


@pytest.mark.parametrize("text", TEXTS)
def test_text_ids_and_token_texts(codec: tuple[TextCodec, Any], text: str) -> None:
    ours, tokenizer = codec
    ids = ours.encode(text)
    assert ids == tokenizer(text).input_ids
    assert "".join(ours.token_texts(ids)) == tokenizer.decode(ids)


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_templates_render_as_transformers(
    codec: tuple[TextCodec, Any], messages: list[dict[str, Any]], add_generation_prompt: bool
) -> None:
    ours, tokenizer = codec
    expected = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt
    )["input_ids"]
    assert ours.encode_chat(messages, add_generation_prompt) == list(expected)


def test_template_helpers_and_refusals(codec: tuple[TextCodec, Any]) -> None:
    ours, tokenizer = codec
    strict = TextCodec(
        ours.card.model_copy(update={"chat_template": STRICT_TEMPLATE}), tokenizer.backend_tokenizer.to_str()
    )
    messages = [{"role": "user", "content": 'say "hi"'}] * 7
    expected = tokenizer.apply_chat_template(
        messages, chat_template=STRICT_TEMPLATE, tokenize=False, add_generation_prompt=True
    )
    assert strict.render_chat(messages, True) == expected
    with pytest.raises(ChatTemplateError, match="only user and assistant"):
        strict.render_chat([{"role": "system", "content": "x"}], False)


def test_add_bos_prepends_once(codec: tuple[TextCodec, Any]) -> None:
    ours, tokenizer = codec
    with_bos = TextCodec(
        ours.card.model_copy(update={"add_bos": True, "bos_token_id": 1}), tokenizer.backend_tokenizer.to_str()
    )
    assert with_bos.encode("Hello")[0] == 1 and with_bos.encode("Hello")[1:] == ours.encode("Hello")
    assert with_bos.encode("<|im_start|>x")[:2] != [1, 1]
