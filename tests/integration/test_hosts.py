"""Workers on other hosts: two workers, each in its own network namespace with its own address on a bridge (as two
machines on one network would be), share one consumer group through a Redis that listens on the bridge. One's link
is cut mid-job: the other reclaims the job after the visibility timeout and its client gets one answer; the link
comes back and the cut worker rejoins. Everything the test creates (namespaces, links, bridge, processes) is removed
even when it fails; where namespaces cannot be made (not root, no `ip`) the test is skipped and says why."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest
import redis

from app.launcher.cluster import RedisNode
from app.launcher.local_service import LocalService
from bench.texts import text_of_tokens
from tests.conftest import ARTIFACTS, DATA_DIR, KEYS, MODEL
from workers.contract.heartbeats import live_ids
from workers.contract.jobs import decode_job
from workers.contract.keys import CONSUMER_GROUP, alive_key, job_outcome_key, jobs_stream

VISIBILITY_S = 6


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@dataclass
class Network:
    """A bridge in this namespace with `hosts` namespaces on it, each through a veth pair, in a private /24."""

    hosts: int
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    subnet: ipaddress.IPv4Network = field(init=False)
    namespaces: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        taken = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
        for third in range(200, 250):
            subnet = ipaddress.IPv4Network(f"10.{231}.{third}.0/24")
            if str(subnet.network_address)[:-1] not in taken:
                self.subnet = subnet
                return
        raise RuntimeError("no free 10.231.x.0/24")

    @property
    def bridge(self) -> str:
        return f"lpbr{self.tag}"

    @property
    def gateway_address(self) -> str:
        return str(self.subnet.network_address + 1)

    def link(self, i: int) -> str:
        """The namespace's end of its veth pair (inside the namespace)."""
        return f"lpv{self.tag}{i}n"

    def up(self) -> Network:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway_address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for i in range(self.hosts):
            name, host_end = f"lpns{self.tag}{i}", f"lpv{self.tag}{i}h"
            ip("netns", "add", name)
            self.namespaces.append(name)
            ip("link", "add", host_end, "type", "veth", "peer", "name", self.link(i))
            ip("link", "set", self.link(i), "netns", name)
            ip("link", "set", host_end, "master", self.bridge)
            ip("link", "set", host_end, "up")
            ip("-n", name, "addr", "add", f"{self.subnet.network_address + 2 + i}/24", "dev", self.link(i))
            ip("-n", name, "link", "set", self.link(i), "up")
            ip("-n", name, "link", "set", "lo", "up")
        return self

    def set_link(self, i: int, state: str) -> None:
        ip("-n", self.namespaces[i], "link", "set", self.link(i), state)

    def down(self) -> None:
        """Remove what up() made: each veth pair (at once; a deleted namespace takes its pair down only later),
        the namespaces, the bridge."""
        for i in range(len(self.namespaces)):
            with contextlib.suppress(subprocess.SubprocessError):
                ip("link", "delete", f"lpv{self.tag}{i}h")
        for name in self.namespaces:
            with contextlib.suppress(subprocess.SubprocessError):
                ip("netns", "delete", name)
        with contextlib.suppress(subprocess.SubprocessError):
            ip("link", "delete", self.bridge)


def namespaces_unavailable() -> str | None:
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) to make network namespaces"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    probe = f"lpprobe{uuid.uuid4().hex[:6]}"
    try:
        ip("netns", "add", probe)
    except subprocess.SubprocessError as exc:
        return f"`ip netns add` failed here: {exc}"
    ip("netns", "delete", probe)
    return None


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(reason)
    net = Network(hosts=2)
    try:
        yield net.up()
    finally:
        net.down()


@pytest.fixture(scope="module")
def two_hosts(network: Network, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    """Redis on the bridge address, a worker in each namespace, the gateway here; short visibility timeout."""
    server = RedisNode(tmp_path_factory.mktemp("redis"), host=network.gateway_address).start()
    env = {
        "LOGPROBE_DATA_DIR": str(DATA_DIR),
        "LOGPROBE_API_KEYS": json.dumps(KEYS),
        "LOGPROBE_WORKER_THREADS": "1",
        "LOGPROBE_WORKER_BATCH_JOBS": "1",  # a worker takes one job at a time: the other one stays free
        "LOGPROBE_VISIBILITY_TIMEOUT_S": str(VISIBILITY_S),
        "LOGPROBE_RECLAIM_EVERY_S": "1",
        "LOGPROBE_REDIS_TIMEOUT_S": "4",
        "LOGPROBE_JOB_TIMEOUT_S": "240",
    }
    prefixes = [["ip", "netns", "exec", name] for name in network.namespaces]
    service = LocalService(
        env=env, log_dir=ARTIFACTS / "hosts", workers=2, redis_url=server.url, worker_prefixes=prefixes
    )
    try:
        yield service.start()
    finally:
        service.stop()
        server.stop()


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def pending_on(client: redis.Redis, consumer: str) -> list[bytes]:
    """Entry ids of the interactive stream pending on `consumer`."""
    found = client.xpending_range(jobs_stream(MODEL), CONSUMER_GROUP, "-", "+", 100, consumername=consumer)
    return [entry["message_id"] for entry in found]


def test_workers_on_two_hosts_survive_a_cut_link(two_hosts: LocalService, network: Network) -> None:
    client = redis.Redis.from_url(two_hosts.redis_url)
    log = two_hosts.log_dir / "worker0.log"
    seen = log.stat().st_size
    pids = [str(worker.pid) for worker in two_hosts.workers]  # `ip netns exec` execs: the worker keeps this pid

    def consumers() -> dict[str, str]:  # worker pid -> its id, the consumer name (host-pid-suffix)
        names = [name.decode() for name in live_ids(client, alive_key(MODEL), time.time())]
        return {name.split("-")[-2]: name for name in names}

    wait_for(lambda: set(pids) <= set(consumers()), "both workers announced", 300)
    cut, other = consumers()[pids[0]], consumers()[pids[1]]
    assert {cut, other} <= set(consumers().values())

    # long texts: scoring one takes seconds, so the link is cut while its worker runs it
    salt = uuid.uuid4().hex[:8]
    texts = [text_of_tokens(2500, lambda t: t.split(), salt=f"host test {salt} {i}.") for i in range(3)]

    def score(text: str) -> httpx.Response:
        headers = {"Authorization": "Bearer key-alpha"}
        return httpx.post(f"{two_hosts.base_url}/v1/score", json={"model": MODEL, "text": text}, headers=headers,
                          timeout=300)  # fmt: skip

    with ThreadPoolExecutor(len(texts)) as pool:
        answers = [pool.submit(score, text) for text in texts]
        wait_for(lambda: bool(pending_on(client, cut)), "a job running on the worker to cut", 180)
        entry_id = pending_on(client, cut)[0]
        job = decode_job(client.xrange(jobs_stream(MODEL), entry_id, entry_id)[0][1])
        network.set_link(0, "down")
        cut_at = time.monotonic()
        responses = [answer.result(timeout=300) for answer in answers]
    assert [r.status_code for r in responses] == [200] * len(texts), [r.text[:200] for r in responses]
    assert time.monotonic() - cut_at >= VISIBILITY_S  # the cut worker's job waited out the visibility timeout
    outcome = json.loads(client.get(job_outcome_key(job.job_id)) or b"{}")
    assert outcome["ok"] and outcome["worker"] == other  # answered by the worker that kept its link, once
    by_record = {r.json()["record_id"] for r in responses}
    assert job.record_id in by_record and len(by_record) == len(texts)
    assert not pending_on(client, cut)

    with log.open("rb") as fh:
        fh.seek(seen)
        lines = fh.read().decode()
    assert "not settled" in lines or "redis unavailable" in lines  # the cut worker lost its connection mid-job

    # the link comes back: the cut worker announces itself again, and runs jobs again
    wait_for(lambda: cut not in consumers().values(), "the cut worker's heartbeat to lapse", 60)
    network.set_link(0, "up")
    wait_for(lambda: cut in consumers().values(), "the cut worker's heartbeat", 120)
    rejoined = log.stat().st_size
    for round_ in range(5):  # concurrent requests, one job per worker at a time: both take some
        batch = [text_of_tokens(300, lambda t: t.split(), salt=f"rejoin {salt} {round_} {i}.") for i in range(4)]
        with ThreadPoolExecutor(len(batch)) as pool:
            assert [r.status_code for r in pool.map(score, batch)] == [200] * len(batch)
        with log.open("rb") as fh:
            fh.seek(rejoined)
            if " score ok" in fh.read().decode():
                break
    else:
        raise AssertionError("the worker whose link came back ran no job")
    client.close()
