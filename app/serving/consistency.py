"""POST /v1/analysis/consistency: n answers sampled as one batch (n generation jobs that the model's worker runs in
its continuous batch), the judged answer (given and scored, or generated greedily beside them), their pairwise
similarities, and the consistency methods (app.analysis.consistency) over them.

Every piece is an ordinary job, charged to the tenant as it starts and cancelled with the request when its client
leaves: the samples are generations, the entailment judgements and P(True) short scorings (batched by the worker
with others' work). A sample whose generation fails is reported with its error, and the methods run on the rest."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from app.analysis import Context
from app.analysis.base import Method
from app.analysis.run import AnalysisError, resolve_params, run_methods, select_methods
from app.analysis.samples import SampleSet
from app.analysis.similarity import cosine_matrix, rouge_l_matrix
from app.platform.budget import check_fits
from app.platform.errors import ApiError
from app.platform.limits import charge
from app.serving.completions import seed_of
from app.serving.inputs import check_length, input_ids
from app.serving.jobs import NO_ROOM, generation_job, raise_for_outcome
from app.serving.scoring import scored_record
from app.serving.services import Services
from app.serving.text import TextCodec
from logprobe.schemas.consistency import ConsistencyOptions, ConsistencyRequest
from workers.contract.cards import ModelCard
from workers.contract.jobs import Sampling
from workers.contract.names import Retain
from workers.contract.records import RecordMeta

JUDGE = (  # the entailment judge's prompt (raw text, no chat template); its next token is " Yes" or " No"
    "Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis? Answer Yes or No.\nAnswer:"
)
YES, NO = " Yes", " No"
P_TRUE = (  # LM-Polygraph 0.7.0, stat_calculators/prompt.py (PromptCalculator), after Kadavath et al. 2022
    "Question: {q}\n Possible answer:{a}\n Is the possible answer:\n (A) True\n (B) False\n The possible answer is:"
)
TRUE = "True"
SCORINGS_AT_ONCE = 8  # judgement scorings of one request in flight at once: others' jobs interleave with them
JUDGE_TOKENS = 32  # the judge prompt's own tokens, for the budget check
T = TypeVar("T")


@dataclass
class Answer:
    """A generated or scored answer: its record, text, and the statistics of its tokens."""

    meta: RecordMeta
    text: str
    rows: slice  # the record's rows that predicted the answer's tokens
    logprobs: np.ndarray
    entropies: np.ndarray
    finish_reason: str

    @property
    def log_likelihood(self) -> float:
        return float(np.sum(self.logprobs, dtype=np.float64))


def answer_of(meta: RecordMeta, stats: dict[str, np.ndarray], n_prompt: int, text: str, reason: str) -> Answer:
    rows = slice(n_prompt - 1, len(meta.token_ids) - 1)
    return Answer(meta, text, rows, stats["logprob"][rows], stats["entropy"][rows], reason)


async def generated(
    services: Services, tenant: str, codec: TextCodec, ids: list[int], sampling: Sampling, retain: Retain | None
) -> Answer:
    card = codec.card
    await charge(services.redis, tenant, "tokens", len(ids) + sampling.max_tokens, services.settings.rate_limit_tpm)
    outcome = raise_for_outcome(await services.jobs.run(generation_job(tenant, card, ids, sampling, retain)), NO_ROOM)
    assert outcome.record_id is not None and outcome.completion_ids is not None
    meta, stats = await services.store.require(tenant, outcome.record_id)
    text = codec.decode(outcome.completion_ids)
    return answer_of(meta, stats, len(ids), text, outcome.finish_reason or "stop")


async def given(
    services: Services, tenant: str, codec: TextCodec, ids: list[int], text: str, retain: Retain | None
) -> Answer:
    """The judged answer as the request gives it: the prompt and its tokens scored as one record."""
    answer_ids = codec.encode(text, add_special_tokens=False)
    if not answer_ids:
        raise ApiError(422, "empty_text", "the answer has no tokens", "answer")
    full = [*ids, *answer_ids]
    check_length(codec.card, len(full), services.settings.max_positions, "answer")
    meta, stats, _ = await scored_record(services, tenant, codec.card, full, retain)
    return answer_of(meta, stats, len(ids), text, "given")


SAMPLE_LOST = frozenset({"record_not_found", "record_evicted"})  # its record went before it was read


async def sample_or_error(draw: Awaitable[Answer]) -> Answer | ApiError:
    """A sample, or the error of a generation that failed in its worker (424) or whose record Redis dropped before
    it was read: it fails alone. Anything else (a refused request, the budget) ends the request."""
    try:
        return await draw
    except ApiError as exc:
        if exc.status != 424 and exc.code not in SAMPLE_LOST:
            raise
        return exc


@dataclass(frozen=True)
class Raised:
    """An error a coroutine raised (not one it returned, as `sample_or_error` returns a failed sample's)."""

    error: BaseException


async def caught(coroutine: Awaitable[T]) -> T | Raised:
    try:
        return await coroutine
    except Exception as exc:
        return Raised(exc)


async def settled(coroutines: Iterable[Awaitable[T]]) -> list[T]:
    """Run concurrently and wait until every one has ended, then raise the first error one raised (an error one
    returns is its result). Nothing is cancelled from outside: each job's waiter notices a client that left and
    cancels its own job in the worker, which a task cancelled meanwhile would not."""
    results = await asyncio.gather(*(caught(c) for c in coroutines), return_exceptions=True)
    # what `caught` let through (a cancellation) was raised too; an Exception among the results was returned
    raised = [
        r.error if isinstance(r, Raised) else r
        for r in results
        if isinstance(r, Raised) or (isinstance(r, BaseException) and not isinstance(r, Exception))
    ]
    for error in raised:
        if not isinstance(error, NotStarted):
            raise error
    for error in raised:
        raise error
    return results  # type: ignore[return-value]


class NotStarted(Exception):
    """A call skipped because another had failed."""


async def bounded(calls: list[Callable[[], Awaitable[T]]], at_once: int) -> list[T]:
    """Run the calls, at most `at_once` in flight; after an error none starts, those in flight end (`settled`)."""
    gate = asyncio.Semaphore(at_once)
    failed = False

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        nonlocal failed
        async with gate:
            if failed:
                raise NotStarted
            try:
                return await call()
            except Exception:
                failed = True
                raise

    return await settled(one(call) for call in calls)


def single_token(codec: TextCodec, text: str) -> int | None:
    ids = codec.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


async def next_logprob(services: Services, tenant: str, card: ModelCard, ids: list[int], token: int) -> float:
    """log p(token | ids), the model's own: the row of the record of `ids + [token]` that predicted it."""
    _, stats, _ = await scored_record(services, tenant, card, [*ids, token])
    return float(stats["logprob"][len(ids) - 1])


async def entailment(services: Services, tenant: str, codec: TextCodec, premise: str, hypothesis: str) -> float:
    """P(Yes) / (P(Yes) + P(No)) after the judge prompt: the model's own judgement that the premise entails the
    hypothesis (the request was refused up front if ' Yes' or ' No' is not one token)."""
    yes, no = single_token(codec, YES), single_token(codec, NO)
    assert yes is not None and no is not None
    ids = codec.encode(JUDGE.format(premise=premise, hypothesis=hypothesis))
    lp_yes, lp_no = await settled(next_logprob(services, tenant, codec.card, ids, t) for t in (yes, no))
    return 1 / (1 + math.exp(lp_no - lp_yes))


async def entailment_matrix(services: Services, tenant: str, codec: TextCodec, texts: list[str]) -> np.ndarray:
    """[i, j]: how far text i entails text j (1 on the diagonal and between equal texts, which are not judged)."""
    n = len(texts)
    pairs = sorted({(texts[i], texts[j]) for i in range(n) for j in range(n) if texts[i] != texts[j]})

    def judge(pair: tuple[str, str]) -> Callable[[], Awaitable[float]]:
        return lambda: entailment(services, tenant, codec, *pair)

    judged = dict(zip(pairs, await bounded([judge(p) for p in pairs], SCORINGS_AT_ONCE), strict=True))
    return np.array([[1.0 if a == b else judged[(a, b)] for b in texts] for a in texts])


async def hidden_matrix(services: Services, tenant: str, answers: list[Answer]) -> np.ndarray:
    """Cosine (clipped at 0) of each answer's mean final hidden state over the rows that predicted its tokens."""
    means = []
    for a in answers:
        try:
            states = await services.store.hidden(tenant, a.meta)
        except ApiError as exc:  # e.g. a model whose records keep rows, not states
            raise ApiError(exc.status, exc.code, f"similarity 'hidden': {exc.message}", "similarity") from exc
        means.append(states[a.rows].astype(np.float64).mean(axis=0))
    return cosine_matrix(np.stack(means))


async def similarities(
    services: Services, tenant: str, codec: TextCodec, kind: str, answers: list[Answer]
) -> np.ndarray:
    """[n + 1, n + 1]: the judged answer first, then the samples."""
    texts = [a.text for a in answers]
    if kind == "lexical":
        return rouge_l_matrix(texts)
    if kind == "entailment":
        return await entailment_matrix(services, tenant, codec, texts)
    return await hidden_matrix(services, tenant, answers)


def question_of(body: ConsistencyRequest) -> str:
    """The question P(True) asks about: the prompt, or the last user message."""
    if body.prompt is not None:
        return body.prompt
    users = [m.content for m in body.messages or [] if m.role == "user"]
    return users[-1] if users else (body.messages or [])[-1].content


async def p_true_logprob(
    services: Services, tenant: str, codec: TextCodec, body: ConsistencyRequest, answer: str
) -> float:
    """log P(True) after the P(True) prompt (raw text, no chat template); NaN if 'True' is not one token."""
    true = single_token(codec, TRUE)
    if true is None:
        return math.nan
    ids = codec.encode(P_TRUE.format(q=question_of(body), a=answer))
    check_length(codec.card, len(ids) + 1, services.settings.max_positions, "prompt")
    return await next_logprob(services, tenant, codec.card, ids, true)


def check_budget(services: Services, body: ConsistencyRequest, n_prompt: int) -> None:
    """422 `request_exceeds_budget` before any job when the whole request is more than a minute's tokens."""
    tokens = (n_prompt + body.max_tokens) * (body.n + 1)
    if body.similarity == "entailment":
        tokens += (body.n + 1) * body.n * 2 * (JUDGE_TOKENS + 2 * body.max_tokens)
    check_fits("tokens", tokens, services.settings.rate_limit_tpm)


def checked_methods(options: ConsistencyOptions, where: str = "") -> tuple[list[Method], dict[str, dict[str, float]]]:
    """The methods asked for and their parameters (422 naming `where` + the field for an unknown one)."""
    try:
        methods = select_methods("consistency", options.methods)
        return methods, resolve_params(methods, {})
    except AnalysisError as exc:
        raise ApiError(422, exc.code, str(exc), f"{where}{exc.param}" if exc.param else None) from exc


async def checked_model(
    services: Services, model: str, options: ConsistencyOptions, where: str = ""
) -> tuple[ModelCard, TextCodec]:
    """The model's card and codec, once the options suit it (max_tokens within its limit, a tokenizer that can
    judge entailment); 422 naming `where` + the field otherwise."""
    card = await services.catalog.card(model)
    codec = await services.catalog.codec(card)
    limit = min(services.settings.max_new_tokens, card.max_new_tokens)
    if options.max_tokens > limit:
        raise ApiError(422, "max_tokens_too_large", f"max_tokens is at most {limit}", f"{where}max_tokens")
    if options.similarity == "entailment" and None in (single_token(codec, YES), single_token(codec, NO)):
        raise ApiError(
            422,
            "similarity_unsupported",
            f"{card.name!r}'s tokenizer has no one-token ' Yes' and ' No' to judge entailment by",
            f"{where}similarity",
        )
    return card, codec


async def consistency(body: ConsistencyRequest, services: Services, tenant: str) -> dict[str, Any]:
    methods, params = checked_methods(body)
    settings = services.settings
    card, codec = await checked_model(services, body.model, body)
    ids = await input_ids(codec, body.prompt, body.messages, True, settings.max_positions, "prompt")
    check_length(card, len(ids), settings.max_positions, "prompt", body.max_tokens)
    check_budget(services, body, len(ids))
    retain: Retain | None = "full" if body.similarity == "hidden" else None  # hidden states are kept in full records

    def sampling(i: int) -> Sampling:
        return Sampling(
            max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p, seed=seed_of(body.seed, i)
        )

    judged = (
        given(services, tenant, codec, ids, body.answer, retain)
        if body.answer is not None
        else generated(
            services, tenant, codec, ids, Sampling(max_tokens=body.max_tokens, temperature=0.0, top_p=1.0), retain
        )
    )
    draws = [sample_or_error(generated(services, tenant, codec, ids, sampling(i), retain)) for i in range(body.n)]
    answer, *drawn = await settled([judged, *draws])
    assert isinstance(answer, Answer)
    good = [d for d in drawn if isinstance(d, Answer)]
    if len(good) < 2:
        first = next(d for d in drawn if isinstance(d, ApiError))
        raise ApiError(424, first.code, f"fewer than 2 of {body.n} samples succeeded: {first.message}")
    matrix = await similarities(services, tenant, codec, body.similarity, [answer, *good])
    true_lp = math.nan
    if any(m.name == "p_true" for m in methods):
        true_lp = await p_true_logprob(services, tenant, codec, body, answer.text)
    samples = SampleSet(
        texts=[a.text for a in good],
        log_likelihoods=np.array([a.log_likelihood for a in good]),
        similarity=matrix[1:, 1:],
        lexical=rouge_l_matrix([a.text for a in good]),
        answer_similarity=(matrix[0, 1:] + matrix[1:, 0]) / 2,
        answer_logprobs=answer.logprobs.astype(np.float64),
        answer_entropies=answer.entropies.astype(np.float64),
        p_true_logprob=true_lp,
    )
    result = run_methods(methods, Context(None, {}, samples=samples), params)  # type: ignore[arg-type]
    return {
        "model": card.name,
        "similarity_kind": body.similarity,
        "answer": {
            "text": answer.text,
            "record_id": answer.meta.record_id,
            "greedy": body.answer is None,
            "similarity": samples.answer_similarity.tolist(),
            "log_likelihood": answer.log_likelihood,
            "p_true": None if math.isnan(true_lp) else math.exp(true_lp),
        },
        "samples": [sample_row(i, seed_of(body.seed, i), d) for i, d in enumerate(drawn)],
        "similarity": samples.similarity.tolist(),
        "methods": [m.name for m in methods],
        "sequence": result.sequence,
        "undefined": result.undefined,
    }


def sample_row(index: int, seed: int | None, drawn: Answer | ApiError) -> dict[str, Any]:
    if isinstance(drawn, ApiError):
        return {
            "index": index,
            "seed": seed,
            **dict.fromkeys(("record_id", "text", "finish_reason", "log_likelihood", "n_tokens")),
            "error": {"code": drawn.code, "message": drawn.message},
        }
    return {
        "index": index,
        "seed": seed,
        "record_id": drawn.meta.record_id,
        "text": drawn.text,
        "finish_reason": drawn.finish_reason,
        "log_likelihood": drawn.log_likelihood,
        "n_tokens": len(drawn.logprobs),
        "error": None,
    }
