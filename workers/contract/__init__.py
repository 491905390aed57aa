"""The contract between gateway and workers, by topic: names (tenants, ids), keys (Redis), lifetimes (deadlines of
what eviction must spare), cards (models), jobs, records (metadata and the array codec), heads, and the head
features both sides compute.

Both sides import these modules, so they import nothing heavy (no torch, no transformers). Nothing is ever pickled:
jobs and metadata are JSON validated by pydantic, arrays are safetensors bytes validated on read."""
