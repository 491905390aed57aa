"""logprobe: full next-token distributions of language models over HTTP.

The tree reads as the architecture; imports run one way, top to bottom (tests/unit/test_layers.py checks it):

    launcher/   `logprobe` CLI, the embedded default's private Redis, whole local deployments
    api/        HTTP only: FastAPI routers, the app factory, typed dependencies
    batches/    server-side batches: submit, store, the leased runner
    serving/    the request path: job queue, records, model catalog, tokenization, analyses over records
    analysis/   the methods: pure numpy over record statistics, one registry
    platform/   settings, errors, logs, metrics, auth, limits, ASGI middleware
    web/        the page (static HTML and JS)

The Python client and the request/response models the routes and the client share live in `client/logprobe/`
(`logprobe.client`, `logprobe.schemas`: pydantic, httpx and numpy only), a distribution of their own.

`workers/` imports nothing from here; the contract between the two is the `workers/contract/` package, by topic
(and, for byte-level records, `workers/bytelevel/records.py` and `stats.py`); both build their Redis clients (one
server or a Redis Cluster) with `workers/redis_client.py`.
"""
