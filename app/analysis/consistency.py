"""Consistency methods: uncertainty from how much n sampled answers to one prompt agree.

Each method is pure numpy in float64 over a `SampleSet` (the samples' texts and log-likelihoods, their pairwise
similarity matrix, the judged answer's token statistics and its similarity to each sample), and equals
LM-Polygraph 0.7.0's estimator of the same name on the same samples and matrix (tests/unit/test_consistency_methods).
The similarity `S[i, j]` plays the role of LM-Polygraph's `semantic_matrix_entail` (how far sample i entails sample
j), `1 - S` that of `semantic_matrix_contra`; two samples mean the same when `S > 1/2` both ways (the NLI argmax
rule of Kuhn et al. for a two-way judge). Higher values mean more uncertain, as in LM-Polygraph.
"""

from __future__ import annotations

import math

import numpy as np

from app.analysis.base import Context, method
from app.analysis.samples import SampleSet

SAME_MEANING = 0.5  # S[i, j] above this both ways: i and j are in one semantic set
ECCENTRICITY_THRESHOLD = 0.9  # LM-Polygraph's `thres`: eigenvectors of the Laplacian below this eigenvalue count
NEEDS = ("samples",)
KUHN = "Kuhn, Gal, Farquhar 2023, Semantic Uncertainty (arXiv 2302.09664); Farquhar et al. 2024, Nature 630"
LIN = (
    "Lin, Trivedi, Sun 2023, Generating with Confidence: Uncertainty Quantification for Black-box Large Language "
    "Models (arXiv 2305.19187)"
)
COCOA = (
    "Vashurin et al. 2025, Uncertainty Quantification for LLMs through Minimum Bayes Risk: Bridging Confidence and "
    "Consistency (arXiv 2502.04964)"
)


def samples_of(ctx: Context) -> SampleSet:
    assert ctx.samples is not None, "consistency methods run on a SampleSet"
    return ctx.samples


def semantic_sets(similarity: np.ndarray) -> list[list[int]]:
    """Samples grouped by meaning as Kuhn et al. (and LM-Polygraph's SemanticClassesCalculator) do: each sample
    joins the first set whose first member it entails both ways, else starts a set."""
    same = similarity > SAME_MEANING
    sets: list[list[int]] = []
    for i in range(similarity.shape[0]):
        for members in sets:
            if same[members[0], i] and same[i, members[0]]:
                members.append(i)
                break
        else:
            sets.append([i])
    return sets


def _semantic_entropy(class_logprobs: list[float], sets: list[list[int]], n: int) -> float:
    """-mean over samples of the log-probability of the sample's set (the paper's Monte-Carlo estimate)."""
    of_sample = np.empty(n)
    for logprob, members in zip(class_logprobs, sets, strict=True):
        of_sample[members] = logprob
    return float(-np.mean(of_sample))


@method("semantic_entropy", ("consistency",), "sequence", "more uncertain", NEEDS, paper=KUHN)
def semantic_entropy(ctx: Context) -> float:
    """Entropy over meanings: samples are grouped into semantic sets (bidirectional entailment under the chosen
    similarity), a set's probability is the sum of its samples' sequence probabilities, and the entropy is
    -mean over samples of log p(set of the sample)."""
    s = samples_of(ctx)
    sets = semantic_sets(s.similarity)
    ll = np.asarray(s.log_likelihoods, dtype=np.float64)
    return _semantic_entropy([float(np.logaddexp.reduce(ll[m])) for m in sets], sets, len(s.texts))


@method("semantic_entropy_discrete", ("consistency",), "sequence", "more uncertain", NEEDS, paper=KUHN)
def semantic_entropy_discrete(ctx: Context) -> float:
    """Discrete semantic entropy (Farquhar et al. 2024): as semantic_entropy, with a set's probability the fraction
    of samples in it (no sequence probabilities)."""
    s = samples_of(ctx)
    sets, n = semantic_sets(s.similarity), len(s.texts)
    return _semantic_entropy([math.log(len(m) / n) for m in sets], sets, n)


@method("num_semantic_sets", ("consistency",), "sequence", "more uncertain", NEEDS, paper=LIN)
def num_semantic_sets(ctx: Context) -> float:
    """The number of connected components of the graph whose edges join samples that entail each other both ways
    (S > 1 - S in both directions)."""
    s = np.asarray(samples_of(ctx).similarity, dtype=np.float64)
    linked = s > 1 - s
    linked = linked & linked.T
    parent = list(range(s.shape[0]))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(linked, k=1)), strict=True):
        parent[root(int(i))] = root(int(j))
    return float(len({root(i) for i in range(len(parent))}))


def symmetric(similarity: np.ndarray) -> np.ndarray:
    s = np.asarray(similarity, dtype=np.float64)
    return (s + s.T) / 2


def laplacian(similarity: np.ndarray) -> np.ndarray:
    """The normalised graph Laplacian I - D^-1/2 W D^-1/2 of W = (S + S^T)/2 (NaN where a degree is 0)."""
    w = symmetric(similarity)
    degree = w.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = 1 / np.sqrt(degree)
    lap: np.ndarray = np.eye(len(w)) - scale[:, None] * w * scale[None, :]
    return lap


def _eigen(similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    lap = laplacian(similarity)
    if not np.isfinite(lap).all():
        return None
    values, vectors = np.linalg.eigh(lap)
    return values, vectors


UNDEFINED_DEGREE = "a sample's similarity to every sample, itself included, is 0: the graph Laplacian is undefined"


@method(
    "eigval_laplacian", ("consistency",), "sequence", "more uncertain", NEEDS, paper=LIN, undefined=UNDEFINED_DEGREE
)
def eigval_laplacian(ctx: Context) -> float:
    """Sum over the eigenvalues λ of the normalised graph Laplacian of max(0, 1 - λ): a continuous count of
    semantic sets."""
    eigen = _eigen(samples_of(ctx).similarity)
    return math.nan if eigen is None else float(np.sum(np.maximum(0.0, 1 - eigen[0])))


@method("degree_matrix", ("consistency",), "sequence", "more uncertain", NEEDS, paper=LIN)
def degree_matrix(ctx: Context) -> float:
    """trace(n I - D) / n² with D the degree matrix of W = (S + S^T)/2: the mean pairwise dissimilarity."""
    w = symmetric(samples_of(ctx).similarity)
    n = len(w)
    return float(np.sum(n - w.sum(axis=1)) / n**2)


@method("eccentricity", ("consistency",), "sequence", "more uncertain", NEEDS, paper=LIN, undefined=UNDEFINED_DEGREE)
def eccentricity(ctx: Context) -> float:
    """The norm of the centred eigenvectors of the graph Laplacian whose eigenvalues are below 0.9 (LM-Polygraph's
    threshold): how far the samples' spectral embeddings spread."""
    eigen = _eigen(samples_of(ctx).similarity)
    if eigen is None:
        return math.nan
    values, vectors = eigen
    kept = vectors[:, values < ECCENTRICITY_THRESHOLD].T
    spread = np.array([np.linalg.norm(v - v.mean()) for v in kept])
    return float(np.linalg.norm(spread))


@method(
    "lexical_similarity",
    ("consistency",),
    "sequence",
    "more uncertain",
    NEEDS,
    paper="Fomicheva et al. 2020, Unsupervised Quality Estimation for Neural Machine Translation (arXiv 2005.10608); "
    "as in Kuhn et al. 2023 (arXiv 2302.09664)",
)
def lexical_similarity(ctx: Context) -> float:
    """Minus the mean ROUGE-L F between all pairs of samples (whatever `similarity` is chosen)."""
    lex = np.asarray(samples_of(ctx).lexical, dtype=np.float64)
    upper = lex[np.triu_indices(len(lex), k=1)]
    return float(-np.mean(upper)) if upper.size else math.nan


def _dissimilarity(s: SampleSet) -> float:
    return float(np.mean(1 - np.asarray(s.answer_similarity, dtype=np.float64)))


@method("cocoa_msp", ("consistency",), "sequence", "more uncertain", NEEDS, paper=COCOA)
def cocoa_msp(ctx: Context) -> float:
    """CoCoA with maximum sequence probability: -log p(answer) × mean over samples of (1 - sim(answer, sample))."""
    s = samples_of(ctx)
    return float(-np.sum(np.asarray(s.answer_logprobs, dtype=np.float64)) * _dissimilarity(s))


@method("cocoa_ppl", ("consistency",), "sequence", "more uncertain", NEEDS, paper=COCOA)
def cocoa_ppl(ctx: Context) -> float:
    """CoCoA with perplexity: -mean token logprob of the answer × mean (1 - sim(answer, sample))."""
    s = samples_of(ctx)
    return float(-np.mean(np.asarray(s.answer_logprobs, dtype=np.float64)) * _dissimilarity(s))


@method("cocoa_mte", ("consistency",), "sequence", "more uncertain", NEEDS, paper=COCOA)
def cocoa_mte(ctx: Context) -> float:
    """CoCoA with mean token entropy: mean entropy over the answer's positions × mean (1 - sim(answer, sample))."""
    s = samples_of(ctx)
    return float(np.mean(np.asarray(s.answer_entropies, dtype=np.float64)) * _dissimilarity(s))


@method(
    "p_true",
    ("consistency",),
    "sequence",
    "more uncertain",
    NEEDS,
    paper="Kadavath et al. 2022, Language Models (Mostly) Know What They Know (arXiv 2207.05221)",
    undefined="the model's tokenizer does not spell 'True' as one token",
)
def p_true(ctx: Context) -> float:
    """-log P(True): the model's own probability that the answer is true, read as the next token after
    LM-Polygraph's prompt 'Question: {q}\\n Possible answer:{a}\\n Is the possible answer:\\n (A) True\\n (B) False\\n
    The possible answer is:' (raw text, no chat template)."""
    return -float(samples_of(ctx).p_true_logprob)
