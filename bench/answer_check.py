"""The trivia set's answer checker: deterministic, offline, no model.

Rules (bench/data/trivia.jsonl; documented in BENCHMARKS.md):
1. Only the answer's first line is read.
2. Normalising: Unicode NFKD with the combining marks dropped (São Tomé -> Sao Tome), every character that is not a
   letter or digit made a space, split on spaces; lower-cased unless the question is `case_sensitive` (chemical
   symbols and ISO codes: "Co" is cobalt, "CO" is not; "IT" is Italy's code, "it" is a word).
3. An answer is correct when the tokens of one of the question's accepted aliases occur as a contiguous run of its
   tokens ("The capital of Peru is Lima." holds "lima").
4. When the set is built, an alias whose tokens occur in the question itself is dropped (an answer that repeats the
   question must not pass), and a question left without aliases is dropped.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

NOT_WORD = re.compile(r"[^0-9A-Za-z]+")


def tokens(text: str, case_sensitive: bool = False) -> list[str]:
    """Rule 2: accents folded, punctuation made spaces, lower-cased unless case-sensitive."""
    folded = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    words = NOT_WORD.sub(" ", folded).split()
    return words if case_sensitive else [w.lower() for w in words]


def contains(haystack: list[str], needle: list[str]) -> bool:
    """Rule 3: `needle` as a contiguous run of `haystack` (an empty needle matches nothing)."""
    k = len(needle)
    return k > 0 and any(haystack[i : i + k] == needle for i in range(len(haystack) - k + 1))


def is_correct(answer: str, aliases: Iterable[str], case_sensitive: bool = False) -> bool:
    """Rules 1-3: does the answer's first line hold one of the aliases?"""
    lines = answer.strip().splitlines()
    said = tokens(lines[0] if lines else "", case_sensitive)
    return any(contains(said, tokens(alias, case_sensitive)) for alias in aliases)


def usable_aliases(question: str, aliases: Iterable[str], case_sensitive: bool = False) -> list[str]:
    """Rule 4: the distinct aliases (in order) that have tokens and do not occur in the question."""
    asked = tokens(question, case_sensitive)
    out: list[str] = []
    for alias in aliases:
        t = tokens(alias, case_sensitive)
        if t and not contains(asked, t) and alias not in out:
            out.append(alias)
    return out
