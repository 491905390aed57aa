"""The HTTP layer: one router per area, the app factory (`gateway.create_app`) and the routes' dependencies.

Routes validate with `logprobe.schemas`, call `app.serving` / `app.batches` for the work, and shape answers. Only
this package and `app.launcher` may import it.
"""
