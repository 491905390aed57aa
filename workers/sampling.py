"""The sampling rule every decoding loop shares: a job's sampling fields applied to one row of logits, in the
order vLLM's sampler applies them (vllm/v1/sample/sampler.py), so that a job samples the same distribution
on either backend.

1. `logit_bias`: added to the named tokens' logits.
2. penalties (vllm/model_executor/layers/utils.py `apply_penalties`): `repetition_penalty` over the tokens of
   prompt and completion (a positive logit divided by it, any other multiplied), then `frequency_penalty` times
   each token's count in the completion and `presence_penalty` for each token present in the completion,
   both subtracted (the OpenAI API's definition; the prompt does not count).
3. temperature 0 (below vLLM's 1e-5): the argmax of the logits so far.
4. otherwise: divide by the temperature, then `min_p` (drop tokens whose probability is below min_p times the
   largest), `top_k`, `top_p` (the smallest set of most likely tokens whose mass reaches top_p), and draw.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workers.contract.jobs import Sampling

SAMPLING_EPS = 1e-5  # vLLM's: a temperature below this is greedy


def penalised_logits(
    logits: torch.Tensor, sampling: Sampling, prompt_ids: Sequence[int] = (), completion_ids: Sequence[int] = ()
) -> torch.Tensor:
    """Steps 1 and 2 on a copy of one row [V] of logits, in its own dtype."""
    scores = logits.clone()
    vocab = scores.shape[0]
    if sampling.logit_bias:
        ids = torch.tensor([i for i in sampling.logit_bias if 0 <= i < vocab], dtype=torch.long)
        bias = torch.tensor([v for i, v in sampling.logit_bias.items() if 0 <= i < vocab], dtype=scores.dtype)
        scores.index_add_(0, ids, bias)
    rep, freq, pres = sampling.repetition_penalty, sampling.frequency_penalty, sampling.presence_penalty
    if rep == 1.0 and freq == 0.0 and pres == 0.0:
        return scores
    out = torch.tensor(list(completion_ids), dtype=torch.long)
    counts = torch.bincount(out[(out >= 0) & (out < vocab)], minlength=vocab).to(scores.dtype)
    present = counts > 0
    if rep != 1.0:
        seen = present.clone()
        prompt = torch.tensor(list(prompt_ids), dtype=torch.long)
        seen[prompt[(prompt >= 0) & (prompt < vocab)]] = True
        penalties = torch.where(seen, torch.tensor(rep, dtype=scores.dtype), torch.tensor(1.0, dtype=scores.dtype))
        scores = scores * torch.where(scores > 0, 1.0 / penalties, penalties)
    if freq != 0.0:
        scores = scores - freq * counts
    if pres != 0.0:
        scores = scores - pres * present.to(scores.dtype)
    return scores


def filtered_logits(scores: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Step 4 before the draw: temperature, min_p, top_k and top_p on penalised logits [V]; dropped tokens -inf."""
    scores = scores / sampling.temperature
    if sampling.min_p > 0.0:
        probs = torch.softmax(scores, dim=-1)
        scores = scores.masked_fill(probs < sampling.min_p * probs.max(), -torch.inf)
    if 0 < sampling.top_k < scores.shape[0]:
        kth = scores.topk(sampling.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, -torch.inf)
    if sampling.top_p < 1.0:
        ascending, order = scores.sort()
        cumulative = torch.softmax(ascending, dim=-1).cumsum(0)
        drop = cumulative <= 1 - sampling.top_p
        drop[-1] = False  # at least one
        scores = scores.clone()
        scores[order[drop]] = -torch.inf
    return scores


def sample_next(
    logits: torch.Tensor,
    sampling: Sampling,
    generator: torch.Generator,
    prompt_ids: Sequence[int] = (),
    completion_ids: Sequence[int] = (),
) -> int:
    """The next token for one row [V] of logits: `prompt_ids` and `completion_ids` (so far) feed the penalties."""
    scores = penalised_logits(logits, sampling, prompt_ids, completion_ids)
    if sampling.temperature < SAMPLING_EPS:
        return int(torch.argmax(scores))
    probs = torch.softmax(filtered_logits(scores, sampling), dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
