"""A durable key's deadline lives in its own hash slot, so one script deletes both; a key without a hash tag has
no such place and is refused."""

from __future__ import annotations

import pytest

from app.batches.store import batch_key, index_key, unfinished_key
from app.platform.expiry import FIXED
from workers.contract.keys import head_index_key, head_key, job_outcome_key
from workers.contract.lifetimes import expiry_key, hash_tag


def test_each_durable_key_has_its_deadline_in_its_own_slot() -> None:
    assert expiry_key(head_key("alpha", "head_1")) == expiry_key(head_index_key("alpha")) == "lp:expiry:{alpha}"
    assert expiry_key(index_key("alpha")) == expiry_key(unfinished_key("alpha")) == "lp:expiry:{alpha}"
    assert expiry_key(batch_key("alpha", "batch_1", "inputs")) == "lp:expiry:{alpha:batch_1}"
    assert expiry_key(job_outcome_key("job_1")) == "lp:expiry:{jobs}" and FIXED == ("lp:expiry:{jobs}",)
    for key in (head_key("alpha", "h"), batch_key("alpha", "b", "results"), job_outcome_key("j")):
        assert hash_tag(key) == hash_tag(expiry_key(key))


def test_a_key_without_a_hash_tag_has_no_deadline_place() -> None:
    assert hash_tag("lp:rec:alpha:r1") is None and hash_tag("lp:{}:x") is None
    with pytest.raises(ValueError, match="no hash tag"):
        expiry_key("lp:rec:alpha:r1")
