"""Consistency methods against LM-Polygraph 0.7.0's own estimators on the same samples and similarity matrices
(random, float64), against the papers' definitions on matrices whose answer is known, and ROUGE-L against
rouge_score.

LM-Polygraph's package `__init__`s import every estimator and stat calculator (sentence-transformers, vision
processors, API clients); its estimator modules themselves need only numpy, scipy, torch, rouge_score and nltk. So the
test imports those modules under empty parent packages: the code that runs is LM-Polygraph's own, unchanged."""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types
from typing import Any

import numpy as np
import pytest

from app.analysis import REGISTRY, Context
from app.analysis.run import resolve_params, run_methods, select_methods
from app.analysis.samples import SampleSet
from app.analysis.similarity import cosine_matrix, rouge_l, rouge_l_matrix

TOL = 1e-6
WORDS = ["paris", "Paris", "the", "capital", "is", "France's", "city", "of", "light", "lyon", "42", "-", "naïve"]


def polygraph(module: str) -> Any:
    """An LM-Polygraph module, imported without running its package `__init__`s."""
    if "lm_polygraph" in sys.modules:
        root = sys.modules["lm_polygraph"].__path__[0]
    else:
        spec = importlib.util.find_spec("lm_polygraph")
        assert spec is not None and spec.submodule_search_locations, "install requirements/lock-dev.txt"
        root = spec.submodule_search_locations[0]
    for name in ("lm_polygraph", "lm_polygraph.utils", "lm_polygraph.estimators", "lm_polygraph.stat_calculators"):
        if name not in sys.modules or not hasattr(sys.modules[name], "__path__"):
            package = types.ModuleType(name)
            package.__path__ = [root + name.removeprefix("lm_polygraph").replace(".", "/")]
            sys.modules[name] = package
    return importlib.import_module(f"lm_polygraph.{module}")


def random_text(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(0, 7))))


def random_case(seed: int) -> SampleSet:
    """n samples: some repeated, a similarity with blocks (sets of meaning) and noise, asymmetric like an NLI
    judge's; token statistics for the answer."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 12))
    texts = [random_text(rng) for _ in range(n)]
    groups = rng.integers(0, int(rng.integers(1, n + 1)), size=n)
    base = np.where(groups[:, None] == groups[None, :], rng.uniform(0.55, 1, (n, n)), rng.uniform(0, 0.45, (n, n)))
    flip = rng.random((n, n)) < 0.15  # some pairs entail one way only
    similarity = np.where(flip, 1 - base, base)
    np.fill_diagonal(similarity, 1.0)
    t = int(rng.integers(1, 9))
    return SampleSet(
        texts=texts,
        log_likelihoods=-rng.exponential(3.0, n),
        similarity=similarity,
        lexical=rouge_l_matrix(texts),
        answer_similarity=rng.uniform(0, 1, n),
        answer_logprobs=-rng.exponential(1.0, t),
        answer_entropies=rng.exponential(1.0, t),
        p_true_logprob=float(-rng.exponential(1.0)),
    )


def ours(samples: SampleSet) -> dict[str, float | None]:
    methods = select_methods("consistency", None)
    return run_methods(methods, Context(None, {}, samples=samples), resolve_params(methods, {})).sequence  # type: ignore[arg-type]


def theirs(s: SampleSet) -> dict[str, float]:
    """LM-Polygraph's estimators on the same samples, matrix and statistics (a batch of one)."""
    est = "estimators"
    classes = polygraph("stat_calculators.semantic_classes").SemanticClassesCalculator()
    entail = s.similarity[None]
    stats: dict[str, Any] = {
        "sample_texts": [s.texts],
        "sample_log_probs": [list(s.log_likelihoods)],
        "semantic_matrix_entail": entail,
        "semantic_matrix_contra": 1 - entail,
        "greedy_sentence_similarity": [s.answer_similarity],
        "greedy_log_likelihoods": [s.answer_logprobs],
        "entropy": [s.answer_entropies],
        "p_true": np.array([s.p_true_logprob]),
    }
    # the classes calculator's rule: the argmax NLI class is "entailment"; for a two-way judge, S > 1 - S
    stats |= classes({**stats, "semantic_matrix_classes": (entail > 0.5).astype(int), "entailment_id": 1}, [""], None)
    lexical = polygraph(f"{est}.lexical_similarity").LexicalSimilarity("rougeL")
    rouge_scorer = importlib.import_module("rouge_score.rouge_scorer")
    lexical.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)  # the service does not stem
    cocoa = polygraph(f"{est}.cocoa")
    semantic = polygraph(f"{est}.semantic_entropy").SemanticEntropy
    estimators = {
        "semantic_entropy": semantic(),
        "semantic_entropy_discrete": semantic(class_probability_estimation="frequency"),
        "num_semantic_sets": polygraph(f"{est}.num_sem_sets").NumSemSets(),
        "eigval_laplacian": polygraph(f"{est}.eig_val_laplacian").EigValLaplacian(),
        "degree_matrix": polygraph(f"{est}.deg_mat").DegMat(),
        "eccentricity": polygraph(f"{est}.eccentricity").Eccentricity(),
        "lexical_similarity": lexical,
        "cocoa_msp": cocoa.CocoaMSP(),
        "cocoa_ppl": cocoa.CocoaPPL(),
        "cocoa_mte": cocoa.CocoaMTE(),
        "p_true": polygraph(f"{est}.p_true").PTrue(),
    }
    return {name: float(estimator(stats)[0]) for name, estimator in estimators.items()}


@pytest.mark.parametrize("seed", range(12))
def test_every_method_equals_lm_polygraph(seed: int) -> None:
    samples = random_case(seed)
    got, want = ours(samples), theirs(samples)
    assert set(got) == {m.name for m in REGISTRY.family("consistency")} == set(want)
    for name, value in want.items():
        assert got[name] is not None, name
        assert got[name] == pytest.approx(value, rel=TOL, abs=TOL), name


def blocks(sizes: list[int]) -> np.ndarray:
    """A similarity of 1 within each set of meaning and 0 across."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    same: np.ndarray = (labels[:, None] == labels[None, :]).astype(float)
    return same


@pytest.mark.parametrize("sizes", [[1], [3], [2, 2], [3, 1, 1], [1, 1, 1, 1, 1]])
def test_the_papers_definitions_on_known_sets_of_meaning(sizes: list[int]) -> None:
    """With k sets of meaning of these sizes: k semantic sets; the Laplacian's eigenvalues are k zeros and ones
    (Lin et al.: EigV counts the sets); discrete semantic entropy is -mean log(size/n) (Farquhar et al.); with
    equal sequence probabilities the probability-weighted one is the same; the degree matrix is the fraction of
    pairs (ordered, self included) across sets."""
    n = sum(sizes)
    s = blocks(sizes)
    samples = SampleSet(
        texts=["x"] * n,
        log_likelihoods=np.full(n, math.log(1 / n)),
        similarity=s,
        lexical=s,
        answer_similarity=np.ones(n),
        answer_logprobs=np.array([-1.0]),
        answer_entropies=np.array([1.0]),
        p_true_logprob=math.log(0.25),
    )
    got = ours(samples)
    entropy = -sum(size * math.log(size / n) for size in sizes) / n
    assert got["num_semantic_sets"] == len(sizes)
    assert got["eigval_laplacian"] == pytest.approx(len(sizes), abs=1e-9)
    assert got["semantic_entropy_discrete"] == pytest.approx(entropy, abs=1e-12)
    assert got["semantic_entropy"] == pytest.approx(entropy, abs=1e-12)
    assert got["degree_matrix"] == pytest.approx(1 - sum(k * k for k in sizes) / n**2, abs=1e-12)
    assert got["cocoa_msp"] == 0.0  # every sample agrees with the answer: no inconsistency
    assert got["p_true"] == pytest.approx(math.log(4), abs=1e-12)


def test_a_sample_similar_to_nothing_leaves_the_laplacian_methods_undefined() -> None:
    s = np.eye(3)
    s[2, 2] = 0.0  # e.g. a sample with no words under ROUGE-L
    samples = SampleSet(["a", "b", ""], np.zeros(3), s, s, np.zeros(3), np.zeros(1), np.zeros(1), math.nan)
    methods = select_methods("consistency", None)
    result = run_methods(methods, Context(None, {}, samples=samples), resolve_params(methods, {}))  # type: ignore[arg-type]
    assert result.sequence["eigval_laplacian"] is None and result.sequence["eccentricity"] is None
    assert "eigval_laplacian" in result.undefined and "p_true" in result.undefined
    assert result.sequence["num_semantic_sets"] == 3.0


@pytest.mark.parametrize("seed", range(20))
def test_rouge_l_equals_rouge_score_without_stemming(seed: int) -> None:
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = np.random.default_rng(seed)
    a, b = random_text(rng), random_text(rng)
    assert rouge_l(a, b) == pytest.approx(scorer.score(a, b)["rougeL"].fmeasure, abs=1e-12)


def test_cosine_matrix_is_the_clipped_cosine() -> None:
    rng = np.random.default_rng(3)
    v = rng.standard_normal((5, 7))
    v[4] = 0.0
    got = cosine_matrix(v)
    for i in range(4):
        for j in range(4):
            cos = float(v[i] @ v[j] / np.linalg.norm(v[i]) / np.linalg.norm(v[j]))
            assert got[i, j] == pytest.approx(min(1.0, max(0.0, cos)), abs=1e-12)
    assert (got[4] == 0).all()
