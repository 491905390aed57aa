"""Contrastive decoding by bytes (Phan et al. 2024, arXiv:2410.09303; workers/bytelevel/decoding.py) on two tiny
random models with different tiny vocabularies (byte-level BPE and SentencePiece with byte fallback): every step's
next-symbol distributions against a brute-force sum over tokenizations written from the definition alone, and
their combination against the formulas of the token path, in float64."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pytest
import scipy.special

from app.platform.errors import ApiError
from app.serving.byte_steps import decode_level
from app.serving.text import TextCodec
from tests.unit.test_byte_level import Tiny, _brute_force, _byte_level_bpe, _sentencepiece
from workers.bytelevel.covers import CoverSetTooLarge, EncodingNotSpelled, char_starts
from workers.bytelevel.decoding import ByteDecoded, ByteView, decode_bytes
from workers.bytelevel.incremental import TreeStream
from workers.bytelevel.stepping import END, ByteStates
from workers.bytelevel.utf8 import allowed_next
from workers.contract.cards import ModelCard
from workers.contract.jobs import Plausibility, Sampling, Selective

TOL = 1e-9
Mode = Literal["canonical", "all"]


@pytest.fixture(scope="module")
def bpe() -> Tiny:
    return Tiny(_byte_level_bpe(), seed=1)


@pytest.fixture(scope="module")
def spm() -> Tiny:
    return Tiny(_sentencepiece(), seed=2)


def prompt_of(tiny: Tiny, text: str) -> list[int]:
    return [tiny.bos, *tiny.encode([text])[0]]


def states_of(tiny: Tiny, prompt: list[int], mode: Mode = "all", max_states: int = 10_000) -> ByteStates:
    stream = TreeStream(tiny.model, tiny.head, prompt)
    eos = [int(tiny.tokenizer.eos_token_id)]
    return ByteStates(stream, tiny.vocab, lambda t: tiny.encode([t])[0], eos, mode, max_states)


def spelled_prefixes(tiny: Tiny, data: bytes) -> list[tuple[tuple[int, ...], bytes]]:
    """Every token sequence whose bytes are a prefix of `data` (the empty one included), with those bytes."""
    spell = {v: b for v, b in enumerate(tiny.vocab.token_bytes) if b}
    out: list[tuple[tuple[int, ...], bytes]] = [((), b"")]
    frontier = list(out)
    while frontier:
        grown = [
            ((*seq, v), spelled + piece)
            for seq, spelled in frontier
            for v, piece in spell.items()
            if data.startswith(spelled + piece)
        ]
        out += grown
        frontier = grown
    return out


def canonical_states(tiny: Tiny, data: bytes) -> set[tuple[int, ...]]:
    """The canonical states after `data` by their definition: token-prefixes of the encodings of every prefix that
    ends on a character boundary, and inside a character, the encoding before it then single-byte tokens."""
    bounds = char_starts(data) + ([len(data)] if data.decode("utf-8", "ignore").encode() == data else [])
    sequences = []
    for i in sorted(set(bounds)):
        ids = tuple(tiny.encode([data[:i].decode()])[0])
        upper = next((j - 1 for j in bounds if j > i), len(data))
        sequences += [ids + tuple(tiny.vocab.byte_tokens[b] for b in data[i:k]) for k in range(i, upper + 1)]
    return {tuple(int(v) for v in seq[:k]) for seq in sequences for k in range(len(seq) + 1)}


def brute_next(tiny: Tiny, prompt: list[int], data: bytes, mode: Mode) -> np.ndarray:
    """log P(symbol | prompt, data) over 256 bytes and the end (256), summed over covers from plain forwards."""
    spell = {v: b for v, b in enumerate(tiny.vocab.token_bytes) if b}
    allowed = None if mode == "all" else canonical_states(tiny, data)
    eos = int(tiny.tokenizer.eos_token_id)
    context = tuple(prompt[1:])  # Tiny.row puts the BOS first
    mass = np.zeros(257)
    for seq, spelled in spelled_prefixes(tiny, data):
        if allowed is not None and seq not in allowed:
            continue
        logp = sum(tiny.row(context + seq[:i])[seq[i]] for i in range(len(seq)))
        row = tiny.row(context + seq)
        rest = data[len(spelled) :]
        for v, piece in spell.items():
            if len(piece) > len(rest) and piece.startswith(rest):
                mass[piece[len(rest)]] += math.exp(logp + row[v])
        if not rest:
            mass[END] += math.exp(logp + row[eos])
    with np.errstate(divide="ignore"):
        return np.log(mass) - np.log(mass.sum())


@pytest.mark.parametrize("mode", ["all", "canonical"])
@pytest.mark.parametrize("which", ["bpe", "spm"])
def test_next_symbol_distribution_equals_a_brute_force_sum(which: str, mode: Mode, bpe: Tiny, spm: Tiny) -> None:
    tiny = bpe if which == "bpe" else spm
    prompt = prompt_of(tiny, "ab c")
    states = states_of(tiny, prompt, mode)
    data = "abc é".encode()
    for m in range(len(data) + 1):
        got = states.distribution()
        want = brute_next(tiny, prompt, data[:m], mode)
        assert (np.isfinite(got) == np.isfinite(want)).all()
        np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], atol=TOL, rtol=0)
        assert math.isfinite(got[END])  # some state spells exactly the bytes so far
        if m < len(data):
            states.advance(data[m])
    # the states are computed once each: the tree holds as many nodes as there are states
    assert states.forward.size == states.size  # type: ignore[attr-defined]


def test_the_reference_agrees_with_the_scoring_brute_force(bpe: Tiny) -> None:
    """Without a prompt and without the end, the reference is test_byte_level's brute force, byte by byte."""
    data = b"ab cab"
    scoring = _brute_force(bpe, data, None)
    for m in range(len(data)):
        decoding = brute_next(bpe, [bpe.bos], data[:m], "all")[:256]
        np.testing.assert_allclose(decoding - scipy.special.logsumexp(decoding), scoring[m], atol=TOL)


def combined_reference(
    dists: list[np.ndarray], weights: list[float], temps: list[float], data: bytes, alpha: float | None
) -> np.ndarray:
    """The token path's formula over the 257 symbols, then only symbols every view reaches that keep UTF-8 valid."""
    tempered = [d / t - scipy.special.logsumexp(d / t) for d, t in zip(dists, temps, strict=True)]
    keep = allowed_next(data) & np.all([np.isfinite(d) for d in dists], axis=0)
    score = sum(w * np.where(np.isfinite(lp), lp, 0.0) for w, lp in zip(weights, tempered, strict=True))
    if alpha is not None:
        keep &= tempered[0] >= math.log(alpha) + tempered[0].max()
    score = np.where(keep, score, -np.inf)
    return score - scipy.special.logsumexp(score)


PRESETS = {  # (weights, temperatures, plausibility alpha): ED with a = 0.6, CD with a = 0.1 and an amateur at 0.5
    "ed": ([1.6, -0.6], [1.0, 1.0], None),
    "cd": ([1.0, -1.0], [1.0, 0.5], 0.1),
}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_byte_contrast_equals_the_float64_reference(preset: str, bpe: Tiny, spm: Tiny) -> None:
    weights, temps, alpha = PRESETS[preset]
    pair = [(bpe, prompt_of(bpe, "abc ab")), (spm, prompt_of(spm, "bc a"))]
    views = [ByteView(states_of(t, p), w, tau) for (t, p), w, tau in zip(pair, weights, temps, strict=True)]
    cut = None if alpha is None else Plausibility(view=0, alpha=alpha)
    sampling = Sampling(max_tokens=6, temperature=0.0, top_p=1.0)
    out = decode_bytes(views, sampling, plausibility=cut, topk=257)
    assert len(out.steps) >= 3
    data = b""
    for step in out.steps:
        dists = [brute_next(t, p, data, "all") for t, p in pair]
        want = combined_reference(dists, weights, temps, data, alpha)
        assert step.token == int(np.argmax(want)) and step.logprob == pytest.approx(want[step.token], abs=TOL)
        finite = np.sort(want[np.isfinite(want)])[::-1]
        np.testing.assert_allclose(step.top_logprobs, finite, atol=TOL, rtol=0)
        for got, d, tau in zip(step.view_logprobs, dists, temps, strict=True):
            assert got == pytest.approx((d / tau - scipy.special.logsumexp(d / tau))[step.token], abs=TOL)
        if step.token != END:
            data += bytes([step.token])
    assert out.data == data[: len(out.data)]
    out.data.decode("utf-8")  # valid text


def test_one_view_decodes_greedily_by_its_own_byte_distribution(bpe: Tiny) -> None:
    prompt = prompt_of(bpe, "ab c")
    out = decode_bytes(
        [ByteView(states_of(bpe, prompt, "canonical"))], Sampling(max_tokens=8, temperature=0.0, top_p=1.0)
    )
    data = b""
    for step in out.steps:
        own = brute_next(bpe, prompt, data, "canonical")
        want = int(np.argmax(np.where(allowed_next(data), own, -np.inf)))
        assert step.token == want
        if want != END:
            data += bytes([want])
    assert out.data == data[: len(out.data)]


def test_a_seeded_run_is_reproducible_and_valid_utf8(spm: Tiny) -> None:
    prompt = prompt_of(spm, "ab")
    sampling = Sampling(max_tokens=12, temperature=1.0, top_p=1.0, seed=5)
    runs = [decode_bytes([ByteView(states_of(spm, prompt, "canonical"))], sampling) for _ in range(2)]
    assert runs[0].data == runs[1].data and runs[0].completion == runs[1].completion
    assert [s.token for s in runs[0].steps] == runs[0].completion
    runs[0].data.decode("utf-8")


def test_states_over_the_bound_are_refused(bpe: Tiny) -> None:
    states = states_of(bpe, prompt_of(bpe, "a"), "all", max_states=4)
    with pytest.raises(CoverSetTooLarge):
        for byte in b"ababab":
            states.advance(byte)


def _completable(data: bytes) -> bool:
    """Whether some continuation makes `data` valid UTF-8 (Python's decoder is the reference)."""
    tails = [b""] + [bytes([c]) + b"\x80" * n for n in range(3) for c in range(0x80, 0xC0)]
    for tail in tails:
        try:
            (data + tail).decode("utf-8")
            return True
        except UnicodeDecodeError:
            continue
    return False


def test_allowed_next_bytes_keep_utf8_valid() -> None:
    rng = np.random.default_rng(0)
    prefixes = [b"", b"a", "é".encode()[:1], "€".encode()[:1], "€".encode()[:2], "😀".encode()[:3], b"\xed", b"\xf4"]
    prefixes += [b"\xe0", b"\xf0", b"\xf0\x90"] + [bytes(rng.integers(0, 128, 3)) for _ in range(3)]
    for data in prefixes:
        allowed = allowed_next(data)
        assert [b for b in range(256) if allowed[b]] == [b for b in range(256) if _completable(data + bytes([b]))]
        complete = True
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            complete = False
        assert allowed[END] == complete


def _codec(tiny: Tiny, name: str, backend: str = "hf") -> TextCodec:
    card = ModelCard(
        name=name,
        fingerprint=name,
        backend=backend,  # type: ignore[arg-type]
        dtype="float64",
        vocab_size=len(tiny.tokenizer),
        hidden_size=32,
        context_length=128,
        add_bos=True,
        bos_token_id=tiny.bos,
        eos_token_ids=[int(tiny.tokenizer.eos_token_id)],
        chat_template=None,
        storage="hidden",
        hidden_dtype="float64",
        rebuild_max_abs_error=0.0,
        max_new_tokens=64,
    )
    return TextCodec(card, tiny.tokenizer.backend_tokenizer.to_str())


def test_the_level_follows_the_tokenizers(bpe: Tiny, spm: Tiny) -> None:
    same, other = [_codec(bpe, "a"), _codec(bpe, "b")], [_codec(bpe, "a"), _codec(spm, "c")]
    assert decode_level("auto", same) == "token" and decode_level("auto", other) == "byte"
    assert decode_level("byte", same) == "byte" and decode_level("byte", other) == "byte"
    with pytest.raises(ApiError) as mismatch:
        decode_level("token", other)
    assert (mismatch.value.status, mismatch.value.code) == (422, "tokenizer_mismatch")
    with pytest.raises(ApiError) as unsupported:  # byte-level decoding needs the weights: not on vLLM
        decode_level("auto", [_codec(bpe, "a"), _codec(spm, "v", backend="vllm")])
    assert (unsupported.value.status, unsupported.value.code) == (501, "byte_level_unsupported")
    assert decode_level("token", [_codec(bpe, "v", backend="vllm")] * 2) == "token"


def test_uscd_by_bytes_contrasts_only_where_the_standard_view_is_uncertain(bpe: Tiny) -> None:
    """USCD's step (workers.decoding.selective) over the 257 symbols, against its formula in float64."""
    prompts = [prompt_of(bpe, "abc ab abc"), prompt_of(bpe, "abc")]
    a, min_ratio = 0.7, 2 / 3
    standard = [brute_next(bpe, prompts[0], b"", "all")]
    threshold = float(np.exp(standard[0]).max()) + 1e-6  # the first step is uncertain; later ones may not be
    rule = Selective(measure="top1", threshold=threshold, min_ratio=min_ratio)
    views = [ByteView(states_of(bpe, prompts[0])), ByteView(states_of(bpe, prompts[1]), -a)]
    out = decode_bytes(views, Sampling(max_tokens=8, temperature=0.0, top_p=1.0), rule=rule, topk=257)
    data = b""
    for step in out.steps:
        p0, p1 = (np.exp(brute_next(bpe, p, data, "all")) for p in prompts)
        allowed = allowed_next(data)
        if p0.max() < threshold:
            mix = p0 - a * p1
            keep = (p0 >= min_ratio * p0.mean()) & (mix > 0) & allowed
            want = np.where(keep, np.log(np.where(keep, mix, 1.0)), -np.inf)
        else:
            want = np.where(allowed, np.log(p0), -np.inf)
        want -= scipy.special.logsumexp(want)
        assert step.contrasted is bool(p0.max() < threshold)
        assert step.token == int(np.argmax(want))
        np.testing.assert_allclose(step.top_logprobs, np.sort(want[np.isfinite(want)])[::-1], atol=TOL, rtol=0)
        if step.token != END:
            data += bytes([step.token])
    assert out.steps[0].contrasted


def test_a_stop_string_ends_the_run_before_it_and_streams_only_what_stays(spm: Tiny) -> None:
    prompt = prompt_of(spm, "ab c")
    free = decode_bytes([ByteView(states_of(spm, prompt))], Sampling(max_tokens=10, temperature=0.0, top_p=1.0))
    assert len(free.text) >= 3
    stop = free.text[2]
    streamed: list[int] = []
    out = decode_bytes(
        [ByteView(states_of(spm, prompt))],
        Sampling(max_tokens=10, temperature=0.0, top_p=1.0, stop=[stop]),
        on_step=lambda step: streamed.append(step.token),
    )
    assert out.finish_reason == "stop" and out.text == free.text[: free.text.index(stop)]
    assert streamed == [s.token for s in out.steps] == list(out.text.encode())


class Unigram:
    """A model that ignores its context: every state's next token is "é" (one two-byte token) with probability
    0.9, the rest spread evenly. Enough to steer a run into a character that max_tokens cuts."""

    def __init__(self, tiny: Tiny) -> None:
        size = len(tiny.tokenizer)
        e_acute = tiny.encode(["é"])[0]
        assert len(e_acute) == 1 and tiny.vocab.token_bytes[e_acute[0]] == "é".encode()
        row = np.full(size, math.log(0.1 / (size - 1)))
        row[e_acute[0]] = math.log(0.9)
        self.root_row = row

    def rows(self, tokens: list[int], parents: list[int]) -> np.ndarray:
        return np.tile(self.root_row, (len(tokens), 1))


def test_max_tokens_counts_bytes_and_drops_a_cut_character(bpe: Tiny) -> None:
    def run(n: int) -> ByteDecoded:
        states = ByteStates(Unigram(bpe), bpe.vocab, lambda t: bpe.encode([t])[0], [int(bpe.tokenizer.eos_token_id)])
        return decode_bytes([ByteView(states)], Sampling(max_tokens=n, temperature=0.0, top_p=1.0))

    whole, cut = run(4), run(5)
    assert whole.text == cut.text == "éé" and whole.finish_reason == cut.finish_reason == "length"
    assert [s.text for s in cut.steps] == ["é", "", "é", ""] and cut.completion == list("éé".encode())


def test_a_tokenizer_whose_encoding_does_not_spell_the_bytes_is_refused(bpe: Tiny) -> None:
    space = bpe.vocab.byte_tokens[ord(" ")]
    assert space is not None

    def with_leading_space(text: str) -> list[int]:  # as a legacy SentencePiece adds "▁"
        return [space, *bpe.encode([text])[0]]

    eos = [int(bpe.tokenizer.eos_token_id)]
    states = ByteStates(Unigram(bpe), bpe.vocab, with_leading_space, eos, "canonical")
    with pytest.raises(EncodingNotSpelled):
        states.advance(ord("a"))
