"""A full-row export streams in pieces with bounded gateway memory (#30 item 5): four clients that ask for large
exports and read none of them do not make the gateway hold the exports (before: each was buffered whole, 4 x 128 MiB
took it from 143 to 813 MB); a client that reads gets every byte, equal to the client's own rows. Real sockets, the
session's gateway and worker, the packaged model."""

from __future__ import annotations

import socket
import time
import uuid
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
import redis

from app.launcher.local_service import LocalService
from bench.texts import PASSAGE
from logprobe import Client
from tests.conftest import MODEL
from workers.contract.keys import export_key

pytestmark = pytest.mark.slow

MIB = 1 << 20


def rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):  # noqa: SIM115
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_unread_exports_do_not_pile_up_in_the_gateway(
    service: str, local_service: LocalService, alpha: httpx.Client, redis_client: redis.Redis
) -> None:
    text = f"{uuid.uuid4().hex} " + PASSAGE * 3  # ~350 tokens: ~65 MiB of float32 rows
    record = alpha.post("/v1/score", json={"model": MODEL, "text": text}).json()
    n = record["n_tokens"]
    size_hint = (n - 1) * 49152 * 4
    assert size_hint > 48 * MIB
    gateway = local_service.gateway.pid
    before = rss_bytes(gateway)
    url = urlparse(service)
    socks = []
    try:
        for _ in range(4):  # each asks for every row and reads nothing (a small receive buffer: it fills at once)
            sock = socket.create_connection((url.hostname, url.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(
                f"GET /v1/records/{record['record_id']}/logprobs HTTP/1.1\r\nHost: t\r\n"
                "Authorization: Bearer key-alpha\r\n\r\n".encode()
            )
            socks.append(sock)
        deadline = time.monotonic() + 300  # a bound, not a speed check: until the worker wrote all four (or the
        while time.monotonic() < deadline:  # gateway took them in whole, as it did before)
            if len(redis_client.keys(export_key("*"))) == 4 or rss_bytes(gateway) - before > size_hint:
                break
            time.sleep(0.5)
        time.sleep(2)  # the gateway has begun every answer and sent what the sockets take
        grown = rss_bytes(gateway) - before
        assert grown < size_hint, f"the gateway grew by {grown / MIB:.0f} MiB"  # not even one export's worth
        head = socks[0].recv(4096).decode(errors="replace").lower()
        assert head.startswith("http/1.1 200") and "content-length:" in head
        assert len(redis_client.keys(export_key("*"))) == 4  # each waits in Redis, read as its client reads
    finally:
        for sock in socks:
            sock.close()
    deadline = time.monotonic() + 60
    while redis_client.keys(export_key("*")) and time.monotonic() < deadline:  # each deleted when its client left
        time.sleep(0.5)
    assert redis_client.keys(export_key("*")) == []

    with Client(service, api_key="key-alpha") as lp:  # read whole: the same rows, in order
        rows = lp.logprobs(record["record_id"])
    assert rows.shape == (n - 1, 49152)
    ids = [t["id"] for t in record["tokens"]]
    lps = [t["logprob"] for t in record["tokens"][1:]]
    np.testing.assert_allclose(rows[np.arange(n - 1), ids[1:]], lps, atol=1e-5)
