"""Tenants are separate: a record id names a record only under the tenant that made it, and no id, however
built, reaches into another tenant's keys."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import MODEL


@pytest.fixture(scope="module")
def alpha_record(service: str) -> str:
    with httpx.Client(base_url=service, headers={"Authorization": "Bearer key-alpha"}, timeout=300) as client:
        body = client.post("/v1/score", json={"model": MODEL, "text": "A record that belongs to alpha."}).json()
    return str(body["record_id"])


def test_another_tenant_gets_404_for_a_record_id(beta: httpx.Client, alpha_record: str) -> None:
    for path in (f"/v1/records/{alpha_record}", f"/v1/records/{alpha_record}/logprobs"):
        response = beta.get(path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "record_not_found"
    answer = beta.post("/v1/analysis/uncertainty", json={"record_id": alpha_record})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "record_not_found"


@pytest.mark.parametrize("forged", ["alpha:{rid}", "alpha%3A{rid}", "../alpha/{rid}", "{rid}:x", "{RID}", "*"])
def test_ids_that_no_record_can_have_are_not_found(beta: httpx.Client, alpha_record: str, forged: str) -> None:
    rid = forged.format(rid=alpha_record, RID=alpha_record.upper())
    response = beta.get(f"/v1/records/{rid}")
    assert response.status_code == 404, response.text
    answer = beta.post("/v1/analysis/uncertainty", json={"record_id": rid})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "record_not_found"


def test_the_owner_still_reads_it(alpha: httpx.Client, alpha_record: str) -> None:
    assert alpha.get(f"/v1/records/{alpha_record}").status_code == 200
