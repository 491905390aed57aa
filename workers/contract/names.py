"""Tenants, record ids and the other names both sides share, the contract's error, and the capture constants."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

PROTOCOL_VERSION = 1

CAPTURE_TOPK = 20

MAX_BLOB_BYTES = 512 * 1024 * 1024


class ProtocolError(ValueError):
    """A stream entry, record or blob that does not follow the contract; it is rejected, never run."""


# Names that become parts of Redis keys: a tenant never holds ":" (tenant "a" asking for id "b:X" must not reach
# tenant "a:b"), and record ids are what record_id() makes.
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

RECORD_ID_PATTERN = r"^[0-9a-f]{32}$"

MAX_JOB_POSITIONS = 1 << 16  # positions one job may name (a record holds at most the context length)

TenantName = Annotated[str, Field(pattern=TENANT_PATTERN)]

RecordId = Annotated[str, Field(pattern=RECORD_ID_PATTERN)]

# What a record keeps: "full" the hidden states (or full rows) besides the statistics, so its full distributions can
# be exported and compared across models; "stats" the statistics and top-k only. A record's id does not depend on
# it: a stats record asked for with "full" is re-scored in place (upgraded), and "stats" never drops full rows.
Retain = Literal["full", "stats"]

_TENANT = re.compile(TENANT_PATTERN)

_RECORD_ID = re.compile(RECORD_ID_PATTERN)


def valid_tenant(tenant: str) -> bool:
    return _TENANT.fullmatch(tenant) is not None


def valid_record_id(record_id: str) -> bool:
    return _RECORD_ID.fullmatch(record_id) is not None


def as_bytes(value: object) -> bytes | None:
    """A Redis reply as bytes (clients run with decode_responses=False); None stays None."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise ProtocolError(f"unexpected Redis reply of type {type(value).__name__}")


def new_secret() -> str:
    """A per-deployment HMAC secret; the first process to start stores it with SET NX under SECRET_KEY."""
    return secrets.token_hex(32)


def record_id(secret: bytes, tenant: str, fingerprint: str, token_ids: list[int], options: dict[str, Any]) -> str:
    """Content address of a record: HMAC over tenant, model fingerprint, token ids and capture options.

    The tenant is part of the address, so one tenant's ids say nothing about another's records.
    """
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    mac.update(json.dumps([PROTOCOL_VERSION, tenant, fingerprint, options], sort_keys=True).encode())
    mac.update(np.asarray(token_ids, dtype="<i4").tobytes())
    return mac.hexdigest()[:32]
