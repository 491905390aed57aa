"""What consistency methods see (app.analysis.consistency): n sampled answers to one prompt and the answer judged."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SampleSet:
    """What consistency methods see: n samples and the answer being judged."""

    texts: list[str]
    log_likelihoods: np.ndarray  # [n]: each sample's sum of token logprobs
    similarity: np.ndarray  # [n, n]: S[i, j] in [0, 1], 1 on the diagonal for a non-empty text
    lexical: np.ndarray  # [n, n]: ROUGE-L F between samples (lexical_similarity's own measure)
    answer_similarity: np.ndarray  # [n]: similarity of the judged answer to each sample
    answer_logprobs: np.ndarray  # [T]: the judged answer's token logprobs
    answer_entropies: np.ndarray  # [T]: the entropy of each of its positions
    p_true_logprob: float  # log P("True") after LM-Polygraph's P(True) prompt (NaN: not measured)
