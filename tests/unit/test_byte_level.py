"""Exact byte-level probabilities (Phan et al. 2024, arXiv:2410.09303) on tiny random models with tiny vocabularies:
the covers module against a brute-force sum over tokenizations, written from the definition alone."""

from __future__ import annotations

import itertools
from functools import cache
from typing import Any

import numpy as np
import pytest
import torch

from workers.bytelevel.covers import (
    CoverSetTooLarge,
    EncodingNotSpelled,
    all_plan,
    byte_distributions,
    canonical_plan,
    char_starts,
)
from workers.bytelevel.forward import head_rows, tree_hidden
from workers.bytelevel.vocab import ByteVocab, gpt2_unicode_to_byte, sentencepiece_bytes, vocab_from_tokenizer
from workers.capture import Unembedding

TEXT = "abc ab bcé a"
TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
SHORT = "ab cé a"  # every tokenization: SentencePiece spells each character two ways, so keep it short


def _byte_level_bpe() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(gpt2_unicode_to_byte(), key=lambda c: gpt2_unicode_to_byte()[c])
    merges = [("a", "b"), ("ab", "c"), ("b", "c"), ("Ġ", "a"), ("Ġa", "b"), ("Ã", "©"), ("c", "Ã")]
    vocab = {c: i for i, c in enumerate(chars)}
    for left, right in merges:
        vocab[left + right] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def _sentencepiece() -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"<0x{b:02X}>": b for b in range(256)}
    for piece in ("a", "b", "c", "▁", "é", "ab", "bc", "▁a", "▁ab", "abc"):
        vocab[piece] = len(vocab)
    merges = [("a", "b"), ("b", "c"), ("▁", "a"), ("▁a", "b"), ("ab", "c")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


class Tiny:
    """A tiny random Llama in float64 over a tokenizer's vocabulary, with plain (reference) forwards."""

    def __init__(self, tokenizer: Any, seed: int) -> None:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(seed)
        config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=128, **TINY)
        self.model = LlamaForCausalLM(config).double().eval()
        with torch.no_grad():  # sharper than a fresh init, so that tokenizations differ in probability
            self.model.lm_head.weight.mul_(40.0)
        self.tokenizer = tokenizer
        self.vocab = vocab_from_tokenizer(tokenizer)
        self.bos = int(tokenizer.bos_token_id)
        self.head = Unembedding(weight=self.model.lm_head.weight.detach())

    @cache  # noqa: B019 (the instances live for one test)
    def row(self, prefix: tuple[int, ...]) -> np.ndarray:
        """log P(. | bos, prefix) by a plain forward of that sequence alone."""
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([[self.bos, *prefix]])).logits[0, -1]
        out: np.ndarray = torch.log_softmax(logits.double(), -1).numpy()
        return out

    def seq_logprob(self, seq: tuple[int, ...]) -> float:
        return float(sum(self.row(seq[:i])[seq[i]] for i in range(len(seq))))

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [list(self.tokenizer(t, add_special_tokens=False).input_ids) for t in texts]


def _brute_force(tiny: Tiny, text: bytes, states: set[tuple[int, ...]] | None) -> np.ndarray:
    """log P(b | x_<m) for every m and b from the Lemma: sum over covers t of x_<m b of P(t). `states` limits the
    covers' prefixes (None: every tokenization)."""
    spell = {v: b for v, b in enumerate(tiny.vocab.token_bytes) if b}
    out = np.empty((len(text), 256))
    for m in range(len(text)):
        prefixes: list[tuple[tuple[int, ...], bytes]] = [((), b"")]
        frontier = list(prefixes)
        while frontier:  # every token sequence whose bytes are a prefix of x_<m (shorter than m + 1 bytes)
            grown = []
            for seq, spelled in frontier:
                for v, piece in spell.items():
                    joined = spelled + piece
                    if len(joined) <= m and text.startswith(joined):
                        grown.append(((*seq, v), joined))
            prefixes += grown
            frontier = grown
        mass = np.zeros(256)
        for seq, spelled in prefixes:
            if states is not None and seq not in states:
                continue
            row, logp = tiny.row(seq), tiny.seq_logprob(seq)
            for v, piece in spell.items():
                joined = spelled + piece
                if len(joined) > m and joined.startswith(text[:m]):
                    mass[joined[m]] += np.exp(logp + row[v])
        with np.errstate(divide="ignore"):
            out[m] = np.log(mass) - np.log(mass.sum())
    return out


def _canonical_states(tiny: Tiny, text: bytes) -> set[tuple[int, ...]]:
    """The canonical mode's states by their definition: token-prefixes of the encodings of the text's prefixes
    ending on a character boundary, and inside a character, the encoding before it then single-byte tokens."""
    states: set[tuple[int, ...]] = set()
    starts = char_starts(text)
    for i in [*starts, len(text)]:
        ids = tuple(tiny.encode([text[:i].decode()])[0])
        end = next((j for j in starts if j > i), len(text))
        extended = [ids] + [ids + tuple(tiny.vocab.byte_tokens[b] for b in text[i:k]) for k in range(i + 1, end)]
        for seq in extended:
            for k in range(len(seq) + 1):
                if sum(len(tiny.vocab.token_bytes[v] or b"") for v in seq[:k]) < len(text):
                    states.add(tuple(int(v) for v in seq[:k]))
    return states


@pytest.fixture(scope="module", params=["byte_level_bpe", "sentencepiece"])
def tiny(request: pytest.FixtureRequest) -> Tiny:
    tokenizer = _byte_level_bpe() if request.param == "byte_level_bpe" else _sentencepiece()
    return Tiny(tokenizer, seed=1)


def test_vocab_maps_both_conventions_to_raw_bytes(tiny: Tiny) -> None:
    text = TEXT.encode()
    ids = tiny.encode([TEXT])[0]
    assert b"".join(tiny.vocab.token_bytes[v] or b"?" for v in ids) == text
    assert tiny.vocab.token_bytes[tiny.bos] is None
    assert all(tiny.vocab.byte_tokens[b] is not None for b in range(256))
    assert sentencepiece_bytes("<0x0A>") == b"\n" and sentencepiece_bytes("▁the") == b" the"


def test_tree_forward_equals_plain_forwards(tiny: Tiny) -> None:
    plan = canonical_plan(tiny.vocab, TEXT.encode(), tiny.encode, tiny.bos, 10_000)
    rows = head_rows(tree_hidden(tiny.model, plan), tiny.head)(np.arange(plan.size))
    for seq, row in zip(plan.sequences(), rows, strict=True):
        np.testing.assert_allclose(row, tiny.row(tuple(seq[1:])), atol=1e-10, rtol=0)
    chunked = head_rows(tree_hidden(tiny.model, plan, chunk=5), tiny.head)(np.arange(plan.size))
    np.testing.assert_allclose(chunked, rows, atol=1e-10, rtol=0)


@pytest.mark.parametrize("mode", ["all", "canonical"])
def test_byte_probabilities_equal_a_brute_force_sum_over_tokenizations(tiny: Tiny, mode: str) -> None:
    text = (SHORT if mode == "all" else TEXT).encode()
    if mode == "all":
        plan = all_plan(tiny.vocab, text, tiny.bos, 10_000)
        states = None
    else:
        plan = canonical_plan(tiny.vocab, text, tiny.encode, tiny.bos, 10_000)
        states = _canonical_states(tiny, text)
        assert {tuple(s[1:]) for s in plan.sequences()} == states
    got = byte_distributions(plan, tiny.vocab, head_rows(tree_hidden(tiny.model, plan), tiny.head), chunk=7)
    want = _brute_force(tiny, text, states)
    finite = np.isfinite(want)
    assert (np.isfinite(got.logdist) == finite).all()
    np.testing.assert_allclose(got.logdist[finite], want[finite], atol=1e-9, rtol=0)
    np.testing.assert_allclose(got.logprob, want[np.arange(len(text)), list(text)], atol=1e-9, rtol=0)
    np.testing.assert_allclose(np.exp(got.logdist).sum(axis=1), 1.0, atol=1e-12)
    # tokenizations disagree here: the byte distributions are not those of one tokenization alone
    assert np.ptp(got.logprob) > 0.1


@pytest.mark.parametrize("mode", ["all", "canonical"])
def test_byte_log_likelihood_is_at_least_the_canonical_tokenizations(tiny: Tiny, mode: str) -> None:
    for seed, text in itertools.product(range(2), ["abcabc", SHORT if mode == "all" else TEXT]):
        model = Tiny(tiny.tokenizer, seed=seed)
        data = text.encode()
        plan = (
            all_plan(model.vocab, data, model.bos, 10_000)
            if mode == "all"
            else canonical_plan(model.vocab, data, model.encode, model.bos, 10_000)
        )
        got = byte_distributions(plan, model.vocab, head_rows(tree_hidden(model.model, plan), model.head))
        canonical = model.seq_logprob(tuple(model.encode([text])[0]))
        assert got.logprob.sum() >= canonical - 1e-12
        assert got.logprob.sum() < 0


def test_a_plan_over_the_bound_is_refused(tiny: Tiny) -> None:
    text = ("ab " * 12).encode()
    with pytest.raises(CoverSetTooLarge, match="limit of 50"):
        all_plan(tiny.vocab, text, tiny.bos, 50)
    with pytest.raises(CoverSetTooLarge):
        canonical_plan(tiny.vocab, text, tiny.encode, tiny.bos, 10)


def test_a_tokenizer_whose_encoding_does_not_spell_the_text_is_refused(tiny: Tiny) -> None:
    marker = tiny.vocab.byte_tokens[ord(" ")] if tiny.vocab.byte_tokens[ord(" ")] is not None else 0

    def with_leading_space(texts: list[str]) -> list[list[int]]:  # as a legacy SentencePiece adds "▁"
        return [[marker, *ids] for ids in tiny.encode(texts)]

    with pytest.raises(EncodingNotSpelled):
        canonical_plan(tiny.vocab, b"ab bc", with_leading_space, tiny.bos, 10_000)
    assert canonical_plan(tiny.vocab, b"ab bc", tiny.encode, tiny.bos, 10_000).size > 1


def test_vocab_ranges() -> None:
    vocab = ByteVocab.from_token_bytes([b"a", b"ab", None, b"abc", b"b", b"", b"a"])
    assert [vocab.sorted_bytes[i] for i in range(len(vocab.sorted_bytes))] == [b"a", b"a", b"ab", b"abc", b"b"]
    assert vocab.prefix_range(0, 5, 0, ord("a")) == (0, 4)
    assert vocab.prefix_range(0, 4, 1, ord("b")) == (2, 4)
    assert vocab.byte_tokens[ord("a")] == 0


def test_tree_forward_applies_a_sliding_window_by_depth(tiny: Tiny) -> None:
    """A Gemma-2 with a window of 3 tokens: deep nodes see only their last ancestors, as a plain forward would."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(2)
    config = Gemma2Config(
        vocab_size=len(tiny.tokenizer), head_dim=8, sliding_window=3, final_logit_softcapping=5.0, **TINY
    )
    model = Gemma2ForCausalLM(config).double().eval()
    head = Unembedding(weight=model.lm_head.weight.detach(), softcap=5.0)
    plan = canonical_plan(tiny.vocab, b"abc ab bc abc ab", tiny.encode, tiny.bos, 10_000)
    assert plan.depths.max() > 3
    for chunk in (1024, 4):
        rows = head_rows(tree_hidden(model, plan, chunk=chunk), head)(np.arange(plan.size))
        for seq, row in zip(plan.sequences(), rows, strict=True):
            with torch.inference_mode():
                logits = model(input_ids=torch.tensor([seq])).logits[0, -1].double()
            np.testing.assert_allclose(row, torch.log_softmax(logits, -1).numpy(), atol=1e-10, rtol=0)
