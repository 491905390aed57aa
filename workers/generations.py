"""Plain generations of one model decoding as one batch, step by step: sequences join and leave as they arrive
and finish (continuous batching on our own loop, for backends that expose start/step, i.e. transformers).

Each sequence samples exactly as it would alone (`decoding.decode` with one view): its own seeded generator, the
same distribution from its own logits row, the same stop, end-of-sequence and length rules. Rows join through one
batched prefill and leave without disturbing the others (`hf.join_streams`, `hf.keep_streams`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from workers.backends.base import Backend, sample_next, stop_hit
from workers.contract.jobs import Sampling
from workers.decoding import tokens_before_stop

log = logging.getLogger(__name__)


@dataclass
class Finished:
    """A generation that ended: its completion (cut before a stop string) and why it ended, or the error that
    ended it (its prefill, its sampling, or the step of the batch it was in failed)."""

    key: str
    completion: list[int]
    finish_reason: str
    error: Exception | None = None
    states: torch.Tensor | None = None  # hidden states [len(prompt + completion) - 1, d]: the record's, when kept


class GenerationPool(Protocol):
    """Generations of one model in flight; `advance` moves each one step and hands back those that ended."""

    def join(self, key: str, prompt_ids: list[int], sampling: Sampling) -> None: ...

    def advance(self) -> list[Finished]: ...

    def abandon(self) -> list[str]:
        """Drop every generation (after a failure); their keys."""
        ...

    def leave(self, keys: set[str]) -> list[str]:
        """Drop these generations between steps (their clients left), the others going on; the keys dropped."""
        ...

    def __len__(self) -> int: ...


@dataclass
class _Sequence:
    key: str
    prompt: list[int]
    sampling: Sampling
    generator: torch.Generator
    completion: list[int] = field(default_factory=list)
    states: list[torch.Tensor] = field(default_factory=list)  # hidden states of the tokens fed so far


class JoinableStreams(Protocol):
    """A backend whose decoding streams can take in and let go of rows between steps, and that hands back the
    hidden states it computes (so a finished generation's record needs no second forward)."""

    def prefill(self, prefixes: list[list[int]]) -> tuple[Any, list[torch.Tensor]]: ...

    def feed(self, streams: Any, tokens: list[int]) -> torch.Tensor: ...

    def can_join(self, streams: Any) -> bool: ...

    def join_streams(self, a: Any, b: Any) -> Any: ...

    def keep_streams(self, streams: Any, rows: list[int]) -> Any: ...

    def next_logits(self, hidden: torch.Tensor) -> torch.Tensor: ...


class SteppedGenerations:
    """The pool of a backend that decodes through `start`/`step` over joinable streams (transformers)."""

    def __init__(self, backend: Backend, streams: JoinableStreams) -> None:
        self.backend = backend
        self.eos = set(backend.card.eos_token_ids)
        self.ops = streams
        self.rows: list[_Sequence] = []
        self.streams: Any = None
        self.logits: torch.Tensor | None = None  # [rows, V]: every row's next-token logits, ready to sample
        self.waiting: list[tuple[_Sequence, list[int]]] = []

    def __len__(self) -> int:
        return len(self.rows) + len(self.waiting)

    def join(self, key: str, prompt_ids: list[int], sampling: Sampling) -> None:
        """Queue a generation; it is prefilled (with the others that joined since the last step) at the next
        `advance`."""
        seed = sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        sequence = _Sequence(key, list(prompt_ids), sampling, torch.Generator().manual_seed(seed))
        self.waiting.append((sequence, sequence.prompt))

    def _prefill_waiting(self) -> list[Finished]:
        """Prefill the sequences waiting, as one batch, and add them to the running one (a cache that cannot
        take in rows lets them wait until the running batch is done)."""
        if self.streams is not None and not self.ops.can_join(self.streams):
            return []
        joining, self.waiting = self.waiting, []
        try:
            streams, states = self.ops.prefill([prompt for _, prompt in joining])
            logits = self.ops.next_logits(torch.stack([hidden[-1] for hidden in states]))
        except Exception as exc:  # e.g. out of memory: each alone, so that a bad one fails alone
            if len(joining) == 1:
                return [Finished(joining[0][0].key, [], "error", exc)]
            failed = []
            for one in joining:
                self.waiting = [one]
                failed.extend(self._prefill_waiting())
            return failed
        try:
            self._add(joining, streams, logits)
        except Exception as exc:  # the running sequences keep their rows; the joining ones fail
            log.exception("%d generations could not join the running batch", len(joining))
            return [Finished(sequence.key, [], "error", exc) for sequence, _ in joining]
        for (sequence, _), hidden in zip(joining, states, strict=True):
            sequence.states.append(hidden)
        return []

    def _add(self, joining: list[tuple[_Sequence, list[int]]], streams: Any, logits: torch.Tensor) -> None:
        if self.streams is not None:
            assert self.logits is not None
            streams, logits = self.ops.join_streams(self.streams, streams), torch.cat([self.logits, logits])
        self.streams, self.logits = streams, logits
        self.rows.extend(sequence for sequence, _ in joining)

    def advance(self) -> list[Finished]:
        """Sample one token for every sequence, hand back those that ended, and run one batched forward for the
        rest. A sequence whose sampling fails ends with that error alone; if the forward fails, the sequences it
        held do (the batch starts afresh), while those that ended before it keep their answers."""
        finished = self._prefill_waiting() if self.waiting else []
        if not self.rows:
            return finished
        assert self.logits is not None
        staying: list[int] = []
        for row, sequence in enumerate(self.rows):
            try:
                done = self._sample(sequence, self.logits[row])
            except Exception as exc:  # its own numbers (a row of NaNs, say): it fails alone
                log.exception("generation %s failed", sequence.key)
                done = Finished(sequence.key, [], "error", exc)
            if done is None:
                staying.append(row)
            else:
                finished.append(done)
        if not staying:
            self.rows, self.streams, self.logits = [], None, None
            return finished
        keys = [self.rows[row].key for row in staying]
        tokens = [self.rows[row].completion[-1] for row in staying]
        try:
            if len(staying) < len(self.rows):
                self.streams = self.ops.keep_streams(self.streams, staying)
                self.rows = [self.rows[row] for row in staying]
            hidden = self.ops.feed(self.streams, tokens)
            self.logits = self.ops.next_logits(hidden)
        except Exception as exc:  # e.g. out of memory
            log.exception("a step of %d generations failed", len(keys))
            self.rows, self.streams, self.logits = [], None, None
            return finished + [Finished(key, [], "error", exc) for key in keys]
        for row, sequence in enumerate(self.rows):
            sequence.states.append(hidden[row : row + 1])
        return finished

    def _sample(self, sequence: _Sequence, logits: torch.Tensor) -> Finished | None:
        """One step of `decoding.decode` for one plain view: the same numbers, the same rules."""
        sampling = sequence.sampling
        token = sample_next(logits.double(), sampling, sequence.generator, sequence.prompt, sequence.completion)
        sequence.completion.append(token)
        completion = sequence.completion
        if sampling.stop and stop_hit(self.backend.decode(completion), sampling.stop):
            return self._finished(sequence, tokens_before_stop(completion, self.backend.decode, sampling.stop), "stop")
        if token in self.eos:
            return self._finished(sequence, len(completion), "stop")
        if len(completion) >= sampling.max_tokens:
            return self._finished(sequence, len(completion), "length")
        return None

    @staticmethod
    def _finished(sequence: _Sequence, keep: int, reason: str) -> Finished:
        """The first `keep` tokens of the completion, with the states of prompt + those tokens but the last."""
        states = torch.cat(sequence.states)[: len(sequence.prompt) + keep - 1]
        return Finished(sequence.key, sequence.completion[:keep], reason, states=states)

    def leave(self, keys: set[str]) -> list[str]:
        """Drop these sequences between steps, their rows let go of the running streams; the keys dropped. If the
        streams cannot let go of rows, the error propagates (the caller abandons the batch)."""
        dropped = [s.key for s, _ in self.waiting if s.key in keys]
        self.waiting = [(s, prompt) for s, prompt in self.waiting if s.key not in keys]
        staying = [row for row, s in enumerate(self.rows) if s.key not in keys]
        if len(staying) == len(self.rows):
            return dropped
        dropped += [s.key for s in self.rows if s.key in keys]
        if not staying:
            self.rows, self.streams, self.logits = [], None, None
            return dropped
        assert self.logits is not None
        self.streams = self.ops.keep_streams(self.streams, staying)
        self.rows, self.logits = [self.rows[row] for row in staying], self.logits[staying]
        return dropped

    def abandon(self) -> list[str]:
        """Drop every sequence (after a failure); the keys dropped."""
        keys = [s.key for s in self.rows] + [s.key for s, _ in self.waiting]
        self.rows, self.waiting, self.streams, self.logits = [], [], None, None
        return keys
