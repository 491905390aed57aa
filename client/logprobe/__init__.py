"""logprobe's Python client: `from logprobe import Client` (sync) or `AsyncClient`, over httpx.

This distribution (`client/`, named `logprobe-client`) holds the client and the HTTP request/response models
(`logprobe.schemas`) only: httpx, pydantic and numpy, no gateway, no worker. The service's own distribution (the
repository root, `logprobe`) carries this package too, so both sides share one set of models.
"""

from logprobe.client import AsyncClient, Client, LogprobeError, ServerEvent

__all__ = ["AsyncClient", "Client", "LogprobeError", "ServerEvent"]
