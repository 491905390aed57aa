"""Exact next-byte distributions of a tokenized model, by summing over cover encodings.

Phan et al. 2024, "Exact Byte-Level Probabilities from Tokenized Language Models for FIM-Tasks and Model
Ensembles" (arXiv:2410.09303). Their Byte-Token Representation Lemma: the probability that a model's output
begins with the bytes y is the sum, over the cover encodings of y, of the encodings' probabilities,

    P(y) = sum over t_1..t_k in cover(y) of P(t_1..t_k),

where t_1..t_k covers y when the bytes of t_1..t_{k-1} are a proper prefix of y and those of t_1..t_k begin
with y (the last token may run past y's end). Here each cover is split into its prefix s = t_1..t_{k-1} (a
"state": a token sequence whose bytes are exactly x_1..x_l) and its last token v, so for the text x,

    U_m(b) = P(x_1..x_m b) = sum over states s with l(s) <= m of P(s) * sum over tokens v whose bytes begin
             with x_{l+1}..x_m b of P(v | s)

and the next-byte distribution is P(b | x_1..x_m) = U_m(b) / sum_b' U_m(b'), as the paper's next-byte
algorithm (and its reference code) normalises over the 256 bytes: mass on special tokens (EOS, chat markers)
ends no byte and is left out. P(s) is the model's own chain of conditionals along s, from a start token (BOS,
or the model's end-of-text token where it adds none).

Which tokenizations count (`mode`):
  - "canonical" (the default, as the paper does): the paper restricts cover encodings to valid encodings, those
    the tokenizer itself produces, and its algorithm enumerates them as encode(x_1..x_i) followed by one token.
    The states here are the tokenizer's encodings of every prefix of the text that ends on a character
    boundary (the whole text included), every token-prefix of those (the paper's set plus these prefixes, so
    that the set is closed under prefixes), and, inside a multi-byte character, the encoding of the text before
    it followed by single-byte tokens (a prefix ending mid-character is no string the tokenizer can encode).
    The last token of a cover is any token: the reference code's `fast_mode`, as its validity filter on the
    last token needs one tokenizer call per vocabulary entry per position.
  - "all": every tokenization of the text (every token sequence whose bytes are a prefix of it), the Lemma in
    its general form. Exact for any model, but the number of states grows exponentially with the length.
Both sets are closed under taking token-prefixes, so the byte-level log-likelihood of a whole text is at least
that of its canonical tokenization (the canonical encoding is one of its covers).

Cost, stated and bounded: one forward position per state (trie node) with fewer bytes than the text, all of
them in one tree-shaped forward (workers.bytelevel.forward), plus O(V) numpy work per state. The canonical
mode needs about (bytes of the text) x (tokens of a word) states; a plan over `max_states` is refused with
CoverSetTooLarge before any forward runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from workers.bytelevel.vocab import ByteVocab
from workers.lanes import checkpoint

Mode = Literal["canonical", "all"]
MODES = ("canonical", "all")
RowsFn = Callable[[np.ndarray], np.ndarray]  # node indexes -> float64 next-token log-probabilities [k, V]


class CoverSetTooLarge(ValueError):
    """The text needs more states (forward positions) than the bound allows."""

    def __init__(self, needed: str, limit: int) -> None:
        super().__init__(
            f"byte-level scoring of this text needs {needed} forward positions (cover states), over "
            f"the limit of {limit}; send a shorter text or raise max_states"
        )
        self.limit = limit


class ByteNotCovered(ValueError):
    """No tokenization in the plan reaches a byte of the text (a byte the vocabulary cannot spell)."""


class EncodingNotSpelled(ValueError):
    """The tokenizer's own encoding of the text does not spell its bytes (e.g. a SentencePiece tokenizer that
    adds a leading space marker): its encodings are no covers of the text, and the canonical mode has no states."""


@dataclass(frozen=True)
class CoverPlan:
    """A trie of states: node 0 is the start token alone; node i > 0 is node parents[i] followed by tokens[i].
    Parents come before their children. offsets[i]: the bytes of the text node i spells (always < len(text))."""

    text: bytes
    mode: str
    tokens: np.ndarray
    parents: np.ndarray
    offsets: np.ndarray
    depths: np.ndarray

    @property
    def size(self) -> int:
        return int(self.tokens.shape[0])

    def sequences(self) -> list[list[int]]:
        """Each node's whole token sequence (start token first): for references and tests."""
        out: list[list[int]] = []
        for i in range(self.size):
            out.append([int(self.tokens[i])] if i == 0 else [*out[int(self.parents[i])], int(self.tokens[i])])
        return out


class _Trie:
    def __init__(self, start_token: int, text: bytes, limit: int) -> None:
        self.text, self.limit = text, limit
        self.tokens, self.parents, self.offsets, self.depths = [start_token], [-1], [0], [0]
        self.index: dict[tuple[int, int], int] = {}

    def child(self, node: int, token: int, width: int) -> int:
        key = (node, token)
        found = self.index.get(key)
        if found is not None:
            return found
        if len(self.tokens) >= self.limit:
            raise CoverSetTooLarge(f"more than {self.limit}", self.limit)
        self.index[key] = len(self.tokens)
        self.tokens.append(token)
        self.parents.append(node)
        self.offsets.append(self.offsets[node] + width)
        self.depths.append(self.depths[node] + 1)
        return len(self.tokens) - 1

    def insert(self, ids: list[int], vocab: ByteVocab) -> None:
        """Add a tokenization of a prefix of the text and its token-prefixes (those that end before the text)."""
        node, n = 0, len(self.text)
        for token in ids:
            piece = vocab.token_bytes[token]
            at = self.offsets[node]
            if not piece or self.text[at : at + len(piece)] != piece or at + len(piece) >= n:
                return
            node = self.child(node, token, len(piece))

    def plan(self, mode: str) -> CoverPlan:
        return CoverPlan(
            text=self.text,
            mode=mode,
            tokens=np.asarray(self.tokens, dtype=np.int64),
            parents=np.asarray(self.parents, dtype=np.int64),
            offsets=np.asarray(self.offsets, dtype=np.int64),
            depths=np.asarray(self.depths, dtype=np.int64),
        )


def check_spelled(vocab: ByteVocab, ids: list[int], text: bytes) -> None:
    """EncodingNotSpelled unless the tokenizer's encoding `ids` of `text` spells exactly its bytes."""
    if b"".join(vocab.token_bytes[t] or b"" for t in ids) != text:
        raise EncodingNotSpelled(
            "the tokenizer's encoding of the text does not spell its bytes (it adds or changes characters, e.g. a "
            "leading space marker), so byte-level probabilities of its canonical encodings are not defined"
        )


PREFIXES_PER_SLICE = 256


def char_starts(text: bytes) -> list[int]:
    """Byte offsets where a UTF-8 character starts (continuation bytes are 0b10xxxxxx)."""
    return [i for i, b in enumerate(text) if b & 0xC0 != 0x80]


def canonical_plan(
    vocab: ByteVocab,
    text: bytes,
    encode_batch: Callable[[list[str]], list[list[int]]],
    start_token: int,
    max_states: int,
) -> CoverPlan:
    """The states of the "canonical" mode: the tokenizer's encodings of the text's prefixes (see the module)."""
    trie = _Trie(start_token, text, max_states)
    starts = char_starts(text)
    ends = [*starts, len(text)]  # the whole text's encoding too: its token-prefixes are states
    prefixes = [text[:i].decode("utf-8") for i in ends]
    encodings: list[list[int]] = []
    for lo in range(0, len(prefixes), PREFIXES_PER_SLICE):
        checkpoint()  # a slice: one group of the prefixes' encodings (all of them are O(bytes²) to tokenize)
        encodings += encode_batch(prefixes[lo : lo + PREFIXES_PER_SLICE])
    check_spelled(vocab, encodings[-1], text)
    for i, ids in zip(ends, encodings, strict=True):
        trie.insert(ids, vocab)
        end = next((j for j in starts if j > i), len(text))
        for k in range(i + 1, end):  # inside a multi-byte character: its first bytes as single-byte tokens
            singles = [vocab.byte_tokens[b] for b in text[i:k]]
            if all(s is not None for s in singles):
                trie.insert([*ids, *(s for s in singles if s is not None)], vocab)
    return trie.plan("canonical")


def all_plan(vocab: ByteVocab, text: bytes, start_token: int, max_states: int) -> CoverPlan:
    """The states of the "all" mode: every token sequence whose bytes are a proper prefix of the text."""
    trie = _Trie(start_token, text, max_states)
    n, node = len(text), 0
    while node < len(trie.tokens):
        at = trie.offsets[node]
        lo, hi = 0, len(vocab.sorted_bytes)
        for depth in range(n - at - 1):  # a child spells depth + 1 bytes and must end before the text does
            lo, hi = vocab.prefix_range(lo, hi, depth, text[at + depth])
            exact = lo
            while exact < hi and vocab.lengths[exact] == depth + 1:
                trie.child(node, int(vocab.order[exact]), depth + 1)
                exact += 1
            if lo == hi:
                break
        node += 1
    return trie.plan("all")


@dataclass(frozen=True)
class ByteLevel:
    """Per byte m (0-based) of the text: logprob[m] = log P(x_m | x_<m); logdist[m] the whole next-byte
    distribution over the 256 bytes (log, -inf where a byte has no cover)."""

    logprob: np.ndarray
    logdist: np.ndarray
    states: int


def byte_distributions(plan: CoverPlan, vocab: ByteVocab, rows: RowsFn, chunk: int = 32) -> ByteLevel:
    """Every byte's exact conditional distribution over the plan's covers (the module's U_m), in float64.

    `rows(nodes)` gives the model's next-token log-probabilities after each node's token sequence."""
    text, n = plan.text, len(plan.text)
    children: list[list[int]] = [[] for _ in range(plan.size)]
    for i in range(1, plan.size):
        children[int(plan.parents[i])].append(i)
    logp_state = np.full(plan.size, -np.inf)
    logp_state[0] = 0.0
    mass = np.zeros((n, 256))
    scale = np.full(n, -np.inf)  # mass[m] is held as exp(-scale[m]) * U_m: states far down would underflow
    for lo in range(0, plan.size, chunk):
        checkpoint()  # a slice: one chunk of nodes' distributions
        nodes = np.arange(lo, min(plan.size, lo + chunk))
        raw = rows(nodes)
        block = np.exp(raw[:, vocab.order])  # probabilities, the tokens sorted by their bytes
        by_first = np.zeros((len(nodes), 256))  # depth 0 for every node at once: sums per first byte
        by_first[:, vocab.first_bytes] = np.add.reduceat(block, vocab.first_starts, axis=1)
        for j, node in enumerate(nodes.tolist()):
            lp = logp_state[node]
            for c in children[node]:
                logp_state[c] = lp + raw[j, plan.tokens[c]]
            if lp == -np.inf:
                continue
            probs = block[j]
            a, b = 0, len(vocab.sorted_bytes)
            for m in range(int(plan.offsets[node]), n):
                depth = m - int(plan.offsets[node])
                if depth >= vocab.table.shape[1]:  # no token is that long
                    break
                if depth == 0:
                    vec = by_first[j]
                else:
                    first = a
                    while first < b and vocab.lengths[first] <= depth:
                        first += 1
                    vec = np.bincount(vocab.table[first:b, depth], weights=probs[first:b], minlength=256)
                if lp > scale[m]:
                    mass[m] *= np.exp(scale[m] - lp) if np.isfinite(scale[m]) else 0.0
                    scale[m] = lp
                mass[m] += np.exp(lp - scale[m]) * vec
                a, b = vocab.prefix_range(a, b, depth, text[m])
                if a == b:
                    break
    total = mass.sum(axis=1)
    target = mass[np.arange(n), np.frombuffer(text, dtype=np.uint8)]
    if n and (target <= 0).any():
        m = int(np.flatnonzero(target <= 0)[0])
        raise ByteNotCovered(f"no tokenization reaches byte {m} ({text[m]:#04x}) of the text")
    with np.errstate(divide="ignore"):
        logdist = np.log(mass) - np.log(total)[:, None]
    return ByteLevel(logprob=np.log(target) - np.log(total), logdist=logdist, states=plan.size)
