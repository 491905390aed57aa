"""Similarities between answers that need no model: ROUGE-L over words, and the cosine of mean final states."""

from __future__ import annotations

import re

import numpy as np

NOT_WORD = re.compile(r"[^a-z0-9]+")


def words(text: str) -> list[str]:
    """rouge_score's default tokenizer without stemming: lower case, runs of [a-z0-9] (other characters split)."""
    return NOT_WORD.sub(" ", text.lower()).split()


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming, one row kept)."""
    row = [0] * (len(b) + 1)
    for x in a:
        previous_diagonal = 0
        for j, y in enumerate(b, start=1):
            kept = row[j]
            row[j] = previous_diagonal + 1 if x == y else max(row[j], row[j - 1])
            previous_diagonal = kept
    return row[len(b)]


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F-measure (Lin 2004) of two texts, as `rouge_score` computes it with use_stemmer=False: 0 when
    either text has no words."""
    x, y = words(a), words(b)
    if not x or not y:
        return 0.0
    lcs = lcs_length(x, y)
    precision, recall = lcs / len(x), lcs / len(y)
    return 0.0 if lcs == 0 else 2 * precision * recall / (precision + recall)


def rouge_l_matrix(texts: list[str]) -> np.ndarray:
    """[n, n] ROUGE-L F between every pair of texts (symmetric)."""
    n = len(texts)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i, n):
            out[i, j] = out[j, i] = rouge_l(texts[i], texts[j])
    return out


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """[n, n] cosine similarity of the rows, clipped to [0, 1] (a similarity, as the graph methods need); a zero
    row is similar to nothing."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1)
    unit = np.divide(v, norms[:, None], out=np.zeros_like(v), where=norms[:, None] > 0)
    cosine: np.ndarray = np.clip(unit @ unit.T, 0.0, 1.0)
    return cosine
