"""What every part of the gateway stands on: settings (access, the export policy), the error envelope and
validation messages that name the field, the JSON body check, JSON logs, Prometheus metrics, API keys and
tenants, rate and admission limits, the request-observing ASGI middleware (with the catch-all for 500s), HEAD
answered as GET, and the sweep that ends durable objects' lifetimes.

Imports nothing from the rest of `app` (only `workers.config` / `workers.contract` for shared settings, and
`workers.redis_client` for what a Redis error means).
"""
