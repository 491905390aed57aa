"""Redis keys, streams and channels: the job plane, records, models, and tenants' objects."""

from __future__ import annotations

from collections.abc import Iterable

from workers.contract.names import ProtocolError, valid_record_id, valid_tenant

CONSUMER_GROUP = "workers"

# Redis Cluster puts a key in the hash slot of the part of its name in braces (its hash tag). The job plane is one
# slot: a worker reads all its streams in one XREADGROUP, and settles a job (its outcome, the inflight mark, the
# ack and delete of its entry) in one transaction. Its entries are small (token ids);
# records, the bulk of the data, spread over every slot by their own names. Objects a tenant creates share the
# tenant's slot with the tenant's index of them (tenant_tag).
JOBS_TAG = "{jobs}"

DONE_CHANNEL = "lp:done"  # published outside transactions (a cluster pipeline refuses PUBLISH); every node relays it
FULL_NOTICE = ":storage_full"  # a DONE_CHANNEL message `<job id>:storage_full`: its outcome could not be stored


def full_notice(job_id: str) -> str:
    """What a worker publishes when Redis, full, refused a job's outcome: the job is settled, its waiters answer 503."""
    return job_id + FULL_NOTICE


DEAD_LETTER_STREAM = "lp:dead"

SECRET_KEY = "lp:secret"

# A model's jobs wait in one stream per lane: scoring (read whenever a worker reads), stepped (generations and
# token-level decodings: read while the running batch has room), heavy (read while the worker can start one), and
# bulk (batches' jobs: read a few at a time, only when nothing a client waits on is there). So a score never queues
# behind another tenant's generations or heavy jobs in a stream, and a busy worker hoards nothing it cannot start.
SCORING_LANE = ""
STEPPED_LANE = "stepped"
HEAVY_LANE = "heavy"
BULK_LANE = "bulk"
LANES = (SCORING_LANE, STEPPED_LANE, HEAVY_LANE, BULK_LANE)


def jobs_stream(model: str, lane: str = "") -> str:
    """The stream of a model's jobs in a lane; jobs that need several models use the stream of their group_name.

    See LANES: the lanes of work a client waits on, and the bulk of batches."""
    return f"lp:{JOBS_TAG}:queue:{model}" + (f":{lane}" if lane else "")


MAX_GROUP = 3  # workers consume the streams of every group of up to this many of their models


def group_name(models: Iterable[str]) -> str:
    """Workers that host all these models consume the group's stream; a group of one is the model itself."""
    return "|".join(sorted(set(models)))


def tenant_tag(tenant: str) -> str:
    """The hash tag of a tenant's objects and their indexes (a tenant name never holds braces)."""
    return "{" + tenant + "}"


def cross_key(tenant: str, cross_id: str) -> str:
    return f"lp:cross:{tenant}:{cross_id}"


def samples_key(tenant: str, samples_id: str) -> str:
    """A token_samples job's answer: a cache derived from a record, with the records' TTL (as cross_key)."""
    return f"lp:samples:{tenant}:{samples_id}"


def job_outcome_key(job_id: str) -> str:
    return f"lp:{JOBS_TAG}:job:{job_id}"


def cancel_key(job_id: str) -> str:
    """Set by the gateway when a job's client went away or its wait timed out (504): a worker that has not started
    the job skips it, and heavy work stops at its next slice."""
    return f"lp:{JOBS_TAG}:cancel:{job_id}"


def inflight_key(tenant: str, record_id: str) -> str:
    return f"lp:{JOBS_TAG}:inflight:{tenant}:{record_id}"


def record_key(tenant: str, record_id: str) -> str:
    if not (valid_tenant(tenant) and valid_record_id(record_id)):
        raise ProtocolError(f"not a tenant and record id: {tenant!r}, {record_id!r}")
    return f"lp:rec:{tenant}:{record_id}"


def card_key(model: str) -> str:
    return f"lp:card:{model}"


def tokenizer_key(fingerprint: str) -> str:
    return f"lp:tokenizer:{fingerprint}"


def alive_key(queue: str) -> str:
    """The live workers of a queue (a model or a group of models): a sorted set of worker ids, each scored by the
    end of its last heartbeat (workers/contract/heartbeats.py). No TTL: eviction cannot make a queue look empty."""
    return f"lp:{JOBS_TAG}:alive:{queue}"


def serving_key(queue: str) -> str:
    """Like alive_key, but a retiring worker stays in it until its last heartbeat ends: one key a waiter reads to
    learn that no worker is left to answer."""
    return f"lp:{JOBS_TAG}:serving:{queue}"


def export_key(job_id: str) -> str:
    """A rows job's answer, streamed to its client and deleted; a deadline, no TTL (workers/contract/lifetimes.py)."""
    return f"lp:{JOBS_TAG}:export:{job_id}"


def steps_key(job_id: str) -> str:
    """Where a contrastive job leaves its per-step details (JSON list)."""
    return f"lp:{JOBS_TAG}:steps:{job_id}"


def steps_channel(job_id: str) -> str:
    """Where a contrastive job publishes each step as it is taken (for streaming)."""
    return f"lp:stream:{job_id}"


def attribution_key(job_id: str) -> str:
    return f"lp:{JOBS_TAG}:attribution:{job_id}"


def lens_key(job_id: str) -> str:
    """A lens job's answer (LensResult JSON), read once by the gateway that asked."""
    return f"lp:{JOBS_TAG}:lens:{job_id}"


def bytes_key(tenant: str, record_id: str) -> str:
    if not (valid_tenant(tenant) and valid_record_id(record_id)):
        raise ProtocolError(f"not a tenant and record id: {tenant!r}, {record_id!r}")
    return f"lp:bytes:{tenant}:{record_id}"


def head_key(tenant: str, head_id: str) -> str:
    return f"lp:head:{tenant_tag(tenant)}:{head_id}"


def head_index_key(tenant: str) -> str:
    return f"lp:head-index:{tenant_tag(tenant)}"
