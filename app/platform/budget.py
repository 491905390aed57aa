"""A request's own cost against its tenant's per-minute budget (LOGPROBE_RATE_LIMIT_RPM and _TPM).

A request whose own cost is more than a whole minute's budget can never pass, however long its client waits: it is
refused as the request it is, 422 `request_exceeds_budget` naming the setting, not with a 429 that no retry could
get past. Its cost is what it asks for up front where that is known (a completion: every prompt × every choice ×
(prompt + max_tokens)), else each charge, and within `adding_up()` the sum of the charges made so far (a
calibration scores its texts one by one)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from app.platform.errors import ApiError

SETTINGS = {"tokens": "LOGPROBE_RATE_LIMIT_TPM", "requests": "LOGPROBE_RATE_LIMIT_RPM"}
_spent: ContextVar[dict[str, int] | None] = ContextVar("budget_spent", default=None)


def check_fits(what: str, amount: int, limit: int) -> None:
    """422 `request_exceeds_budget` when `amount` alone is more than a minute's `limit` (0: no limit)."""
    if limit > 0 and amount > limit:
        setting = SETTINGS.get(what, f"the {what} per minute")
        raise ApiError(
            422,
            "request_exceeds_budget",
            f"this request needs {amount} {what}, more than the {limit} {what} per minute this key may use "
            f"({setting}), so no retry can pass; split it into smaller requests",
        )


def fits_with_what_it_spent(what: str, amount: int, limit: int) -> None:
    """`check_fits` for `amount` plus what this request was charged before (within `adding_up`), counting it."""
    spent = _spent.get()
    total = amount + (spent.get(what, 0) if spent is not None else 0)
    check_fits(what, total, limit)
    if spent is not None:
        spent[what] = total


@contextlib.contextmanager
def adding_up() -> Iterator[None]:
    """Charges made inside (and in tasks it gathers) add up to one request's cost. Only around work that ends
    inside it: a task spawned to outlive it would keep adding to the same sum."""
    token = _spent.set({})
    try:
        yield
    finally:
        _spent.reset(token)
