"""Batches: many texts, each scored by the workers and then analysed, with progress and JSONL results.

`submit` checks a batch request and stores it, `store` keeps batches in Redis, `runner` drives them (a leased
runner in every gateway). May import `app.serving`, `app.analysis`, `logprobe.schemas`, `app.platform` and
`workers.contract`; never `app.api`.
"""
