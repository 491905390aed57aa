"""Benchmark texts of a given token length, built from a fixed English passage."""

from __future__ import annotations

from collections.abc import Callable

PASSAGE = (
    "The harbour town woke slowly that winter. Fishermen mended their nets by the sea wall while the baker's "
    "boy ran along the quay with a basket of warm bread. At the end of the pier an old lighthouse, painted "
    "white and red, stood against a sky the colour of slate. Nobody remembered who had built it, but "
    "everybody agreed that its light had saved more ships than any captain could count. In the evenings the "
    "keeper climbed its ninety-one steps, polished the great lens, and wrote a line in the logbook: the wind, "
    "the weather, the names of the boats that came home. Some nights he wrote nothing but a single word. "
)


def text_of_tokens(n_tokens: int, encode: Callable[[str], list[int]], salt: str = "") -> str:
    """A text of about n_tokens tokens (within a few), with an optional salt so repeats miss the cache."""
    words = (f"{salt} " + PASSAGE * (1 + n_tokens // 80)).split(" ")
    lo, hi = 1, len(words)
    while lo < hi:  # the longest prefix of words with at most n_tokens tokens
        mid = (lo + hi + 1) // 2
        if len(encode(" ".join(words[:mid]))) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])
