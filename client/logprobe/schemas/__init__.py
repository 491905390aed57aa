"""Request and response models of the public API, shared by the HTTP routes and the Python client.

Imports pydantic and the standard library only: no FastAPI, no Redis, nothing from the rest of `app` or from
`workers`, so `logprobe.client` works from a plain `pip install logprobe` without the gateway's extras.
The rules that need the service (limits, tokenizers, models) live in `app.serving`, not here.
"""
