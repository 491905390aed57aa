"""The most characters of input text one token can stand for, read from a tokenizer's JSON, so that a text too long
for any model's context is refused by its length before it is tokenized (tokenizing megabytes takes seconds).

Why the bound is safe (a text of c characters has at least c / M tokens, M the bound): with no part that drops
text, the pieces that the model's tokens spell out cover the whole (normalized) text, and

- a byte-level tokenizer (GPT-2's ByteLevel pre-tokenizer, SmolLM2's) spells bytes, one vocabulary character per
  byte; a character is at least one byte, so c <= bytes <= tokens x (longest token in bytes). A token that holds
  part of a character (a byte token) only adds tokens.
- a SentencePiece-style BPE (Gemma's: " " replaced by "▁", byte fallback) spells normalized characters, at least
  one per input character (replacing one character by one, prepending "▁", decomposing, lowercasing never
  shrink the text); a byte-fallback token ("<0xE2>", 6 characters) covers one byte, less than it spells.
- added tokens (matched in the text as they are) cover their own content, counted in UTF-8 bytes.

So c > limit x M implies more than `limit` tokens. Any part that can shrink or drop text (stripping, NFC/NFKC
composition, whitespace splitting, regex replacements), an unknown token fused over a run of unknown characters,
other models (WordPiece, Unigram) or truncation: no bound (None), and such texts are only tokenized off the event
loop, as every text is.
"""

from __future__ import annotations

import json
from typing import Any

GROWING_NORMALIZERS = {"NFD", "NFKD", "Lowercase", "Prepend", "ByteLevel"}  # never fewer characters
KEEPING_PRE_TOKENIZERS = {"ByteLevel", "Metaspace", "Digits", "UnicodeScripts"}  # split, keeping every character
SPLITTING_PRE_TOKENIZERS = {"Split", "Punctuation"}  # keep every character unless their behaviour is "Removed"


def normalizer_keeps_text(part: dict[str, Any] | None) -> bool:
    """Whether a normalizer leaves at least as many characters as it is given."""
    if part is None:
        return True
    if part.get("type") == "Sequence":
        return all(normalizer_keeps_text(p) for p in part.get("normalizers") or [])
    if part.get("type") == "Replace":  # a plain string replaced by one at least as long
        pattern = (part.get("pattern") or {}).get("String")
        return pattern is not None and len(part.get("content") or "") >= len(pattern)
    return part.get("type") in GROWING_NORMALIZERS


def pre_tokenizer_keeps_text(part: dict[str, Any] | None) -> bool:
    """Whether a pre-tokenizer's pieces hold every character it is given."""
    if part is None:
        return True
    if part.get("type") == "Sequence":
        return all(pre_tokenizer_keeps_text(p) for p in part.get("pretokenizers") or [])
    if part.get("type") in SPLITTING_PRE_TOKENIZERS:
        return part.get("behavior") != "Removed"
    return part.get("type") in KEEPING_PRE_TOKENIZERS


def chars_per_token(tokenizer_json: str) -> int | None:
    """At most how many input characters one token covers, or None where the tokenizer's parts give no bound."""
    spec = json.loads(tokenizer_json)
    model = spec.get("model") or {}
    if spec.get("truncation") is not None or model.get("type") != "BPE":
        return None
    if model.get("unk_token") is not None and model.get("fuse_unk") and not model.get("byte_fallback"):
        return None
    if not (normalizer_keeps_text(spec.get("normalizer")) and pre_tokenizer_keeps_text(spec.get("pre_tokenizer"))):
        return None
    longest = max((len(piece) for piece in model.get("vocab") or {}), default=1)
    added = max((len(t.get("content", "").encode()) for t in spec.get("added_tokens") or []), default=1)
    return max(1, longest, added)
