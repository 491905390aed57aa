"""Per-token fields of answers, built from a record's statistics and the model's tokenizer."""

from __future__ import annotations

from typing import Any

import numpy as np

from app.serving.text import TextCodec
from workers.contract.records import RecordMeta


def token_rows(
    meta: RecordMeta, stats: dict[str, np.ndarray], codec: TextCodec, top_k: int, start: int = 0
) -> list[dict[str, Any]]:
    """Per-token fields for tokens start..T-1; row t-1 of the statistics predicted token t."""
    pieces = codec.pieces()
    ids = meta.token_ids
    texts = codec.token_texts(ids)
    special = codec.special_ids
    logprob, rank, entropy = stats["logprob"].tolist(), stats["rank"].tolist(), stats["entropy"].tolist()
    top_ids = stats["topk_ids"][:, :top_k].tolist()
    top_lp = stats["topk_logprobs"][:, :top_k].tolist()
    rows: list[dict[str, Any]] = []
    for t in range(start, len(ids)):
        if t == 0:
            rows.append(
                {
                    "id": ids[0],
                    "text": texts[0],
                    "special": ids[0] in special,
                    "logprob": None,
                    "rank": None,
                    "entropy": None,
                    "top_logprobs": None,
                }
            )
            continue
        r = t - 1
        rows.append(
            {
                "id": ids[t],
                "text": texts[t],
                "special": ids[t] in special,
                "logprob": logprob[r],
                "rank": rank[r],
                "entropy": entropy[r],
                "top_logprobs": [
                    {"id": i, "text": pieces[i], "logprob": v} for i, v in zip(top_ids[r], top_lp[r], strict=True)
                ],
            }
        )
    return rows
