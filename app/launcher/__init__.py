"""Starting things: the `logprobe` CLI (`serve`, `worker`, and client verbs over JSONL), the embedded default's
private Redis, and whole local deployments as separate processes (tests and benchmarks).

The top of the tree: may import anything in `app` and `workers`, mostly lazily so client verbs stay light.
"""
