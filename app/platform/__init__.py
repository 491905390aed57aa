"""What every part of the gateway stands on: settings, the error envelope, JSON logs, Prometheus metrics, API
keys and tenants, rate and admission limits, the request-observing ASGI middleware.

Imports nothing from the rest of `app` (only `workers.config` / `workers.protocol` for shared settings).
"""
