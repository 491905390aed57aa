"""Contrastive decodings of many requests side by side, step by step: every view's stream of one model, whatever
request it belongs to, is a row of that model's one running batch (continuous batching across requests, for
backends whose streams can take in and let go of rows between steps: transformers' KV caches, and vLLM's streams,
which its pooling engine re-reads whole at every step).

Each decoding makes its steps exactly as it would alone (`decoding.Contrast`, the same code `decode` runs): its own
seeded generator, its own views' rows of logits, the same stop, end-of-sequence and length rules. Requests join
through one batched prefill per model and leave without disturbing the others (`join_streams`, `keep_streams`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from workers.decoding import Contrast, Decoded

log = logging.getLogger(__name__)


@dataclass
class ContrastDone:
    """A decoding that ended: what it decoded, or the error that ended it (its prefill, its own step, or the
    forward of a model it had a row in failed)."""

    key: str
    decoded: Decoded | None
    error: Exception | None = None


@dataclass
class _Batch:
    """One model's running streams: row r is view `members[r][1]` of the decoding `members[r][0]`."""

    ops: Any  # the backend (workers.generations.JoinableStreams, with its `start`)
    streams: Any = None
    logits: torch.Tensor | None = None  # [rows, V]: each row's next-token logits
    members: list[tuple[str, int]] = field(default_factory=list)


def joinable(backend: Any) -> bool:
    """Whether a backend's decoding streams can join a running batch (`JoinableStreams`; else its decodings run
    alone)."""
    names = ("feed", "next_logits", "can_join", "join_streams", "keep_streams")
    return all(callable(getattr(backend, name, None)) for name in names)


class SteppedContrasts:
    """Contrastive decodings in flight on one worker; `advance` moves each one step and hands back those that
    ended."""

    def __init__(self) -> None:
        self.running: dict[str, Contrast] = {}
        self.waiting: dict[str, Contrast] = {}
        self.batches: dict[int, _Batch] = {}  # by id(backend)
        self.ending: list[ContrastDone] = []  # ended in the step under way
        self.failed: list[ContrastDone] = []  # lost their rows while others left: answered by the next `advance`

    def __len__(self) -> int:
        return len(self.running) + len(self.waiting) + len(self.failed)

    def join(self, key: str, contrast: Contrast) -> None:
        """Queue a decoding; its views are prefilled (with the others that joined since) at the next `advance`."""
        self.waiting[key] = contrast

    @torch.inference_mode()
    def advance(self) -> list[ContrastDone]:
        """One step of every decoding: prefill those waiting, draw each one's next token, hand back those that
        ended, and run one forward per model for the rest. A decoding whose step fails (its own numbers, or the
        forward of a model it has a row in) ends with that error; the others go on."""
        done, self.failed = self.failed, []
        done += self._prefill_waiting() if self.waiting else []
        self.ending = done  # what `abandon` still answers if something below fails after all
        ended: set[str] = set()
        rows = self._logits_by_view()
        for key, contrast in self.running.items():
            try:
                decoded = contrast.take([rows[(key, i)] for i in range(len(contrast.views))])
            except Exception as exc:  # this decoding's own step (a row of NaNs, a stop check): it fails alone
                log.exception("contrastive decoding %s failed", key)
                done.append(ContrastDone(key, None, exc))
                ended.add(key)
                continue
            if decoded is not None:
                ended.add(key)
                done.append(ContrastDone(key, decoded))
        for key in ended:
            del self.running[key]
        for key, error in self._feed(ended).items():
            del self.running[key]
            done.append(ContrastDone(key, None, error))
        self.ending = []
        return done

    def _feed(self, leaving: set[str]) -> dict[str, Exception]:
        """Drop the rows of the decodings leaving and run each model's forward for the rest: the decodings with a
        row in a model whose forward failed, each with that error (their rows leave the other models too)."""
        failed: dict[str, Exception] = {}
        for backend_id, batch in list(self.batches.items()):
            try:
                if self._drop_rows(backend_id, batch, leaving | set(failed)):
                    tokens = [self.running[key].completion[-1] for key, _ in batch.members]
                    batch.logits = batch.ops.next_logits(batch.ops.feed(batch.streams, tokens))
            except Exception as exc:  # e.g. out of memory: this model's streams start afresh
                log.exception("a step of %d contrastive streams failed", len(batch.members))
                self.batches.pop(backend_id, None)
                failed.update({key: exc for key, _ in batch.members if key not in leaving and key not in failed})
        return failed | self._drop_everywhere(set(failed))

    def _drop_everywhere(self, keys: set[str]) -> dict[str, Exception]:
        """Drop the rows of `keys` from every model's batch, between steps; the decodings that fail with a batch
        that could not let go of rows."""
        failed: dict[str, Exception] = {}
        while keys:
            more: set[str] = set()
            for backend_id, batch in list(self.batches.items()):
                try:
                    self._drop_rows(backend_id, batch, keys)
                except Exception as exc:
                    log.exception("contrastive streams could not let %d rows go", len(keys))
                    self.batches.pop(backend_id, None)
                    lost = {key for key, _ in batch.members} - keys - failed.keys()
                    failed.update({key: exc for key in lost})
                    more |= lost
            keys = more
        return failed

    def _drop_rows(self, backend_id: int, batch: _Batch, keys: set[str]) -> bool:
        """Let the rows of `keys` go from one model's batch (its logits too); whether any rows stay."""
        staying = [r for r, (key, _) in enumerate(batch.members) if key not in keys]
        if not staying:
            del self.batches[backend_id]
            return False
        if len(staying) < len(batch.members):
            batch.streams = batch.ops.keep_streams(batch.streams, staying)
            batch.members = [batch.members[r] for r in staying]
            batch.logits = None if batch.logits is None else batch.logits[staying]
        return True

    def _logits_by_view(self) -> dict[tuple[str, int], torch.Tensor]:
        out: dict[tuple[str, int], torch.Tensor] = {}
        for batch in self.batches.values():
            assert batch.logits is not None
            for row, member in enumerate(batch.members):
                out[member] = batch.logits[row]
        return out

    def _prefill_waiting(self) -> list[ContrastDone]:
        """Prefill the waiting decodings' views, one batch per model, and add their rows to the running batches.
        Decodings whose model's running streams cannot take in rows wait until those are done. If a batched
        prefill fails, each decoding is prefilled alone, so that a bad one fails alone."""
        joining = {key: c for key, c in self.waiting.items() if all(self._can_join(v.backend) for v in c.views)}
        if not joining:
            return []
        for key in joining:
            del self.waiting[key]
        try:
            prepared = _prefilled(joining)
        except Exception as exc:
            if len(joining) == 1:
                return [ContrastDone(key, None, exc) for key in joining]
            failed = []
            for key, contrast in joining.items():
                self.waiting = {key: contrast, **self.waiting}
                failed.extend(self._prefill_waiting())
            return failed
        self.running.update(joining)
        try:
            for backend_id, (ops, streams, logits, members) in prepared.items():
                batch = self.batches.get(backend_id)
                if batch is None:
                    self.batches[backend_id] = _Batch(ops, streams, logits, members)
                else:
                    assert batch.logits is not None
                    joined = ops.join_streams(batch.streams, streams), torch.cat([batch.logits, logits])
                    batch.streams, batch.logits = joined
                    batch.members += members
        except Exception as exc:  # the running decodings keep their rows; the joining ones fail
            log.exception("%d contrastive decodings could not join the running streams", len(joining))
            lost = {key: exc for key in joining} | self._drop_everywhere(set(joining))
            for key in lost:
                del self.running[key]
            return [ContrastDone(key, None, error) for key, error in lost.items()]
        return []

    def _can_join(self, backend: Any) -> bool:
        batch = self.batches.get(id(backend))
        return batch is None or bool(backend.can_join(batch.streams))

    def leave(self, keys: set[str]) -> list[str]:
        """Drop these decodings between steps (their clients left), their rows let go of every model's streams; the
        keys dropped. A decoding that loses its rows with them (streams that could not let go) fails at the next
        `advance`."""
        dropped = [key for key in self.waiting if key in keys]
        self.waiting = {key: c for key, c in self.waiting.items() if key not in keys}
        running = {key for key in self.running if key in keys}
        for key in running:
            del self.running[key]
        for key, error in self._drop_everywhere(running).items():
            del self.running[key]
            self.failed.append(ContrastDone(key, None, error))
        return dropped + sorted(running)

    def abandon(self) -> list[str]:
        """Drop every decoding (after a failure); their keys, with those of decodings that ended in the failed step."""
        keys = [*(one.key for one in (*self.failed, *self.ending)), *self.running, *self.waiting]
        self.running, self.waiting, self.batches, self.ending, self.failed = {}, {}, {}, [], []
        return keys


Prepared = tuple[Any, Any, torch.Tensor, list[tuple[str, int]]]  # backend, streams, logits, members


def _prefilled(joining: dict[str, Contrast]) -> dict[int, Prepared]:
    """For each model, the joining decodings' views started as one batch (the backend's `start`): its streams,
    their next-token logits and whose views they are."""
    prefixes: dict[int, tuple[Any, list[list[int]], list[tuple[str, int]]]] = {}
    for key, contrast in joining.items():
        for i, view in enumerate(contrast.views):
            _, ids, members = prefixes.setdefault(id(view.backend), (view.backend, [], []))
            ids.append(view.prefix_ids)
            members.append((key, i))
    return {backend_id: (ops, *ops.start(ids), members) for backend_id, (ops, ids, members) in prefixes.items()}
