"""The request path, below HTTP: jobs submitted to the workers' streams (`jobs`), records read from Redis
(`store`, `scoring`), the model catalog and tokenization (`catalog`, `text`, `chat_template`, `inputs`),
two-record pairs and cross statistics (`pairs`, `cross`), analyses over records (`analyses`), calibrations,
frequency tables, contrastive and OpenAI-shaped decoding jobs.

May import `app.analysis`, `logprobe.schemas`, `app.platform` and `workers.contract` / `workers.config` (and the
byte-level records' contract, `workers.bytelevel.records` / `.stats`); never
`app.api`, `app.batches` or `app.launcher`. No FastAPI here.
"""
