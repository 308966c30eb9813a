"""`inferline bench`: serving and offline benchmarks whose figures compare with `vllm bench serve`.

One job per file, data flowing one way:
workload (what to send) → client (one streamed request → RequestRecord) → load (closed or open loop)
→ metrics (pure arithmetic on records) → report (progress, table, versioned JSON) → plot.
`serve.py` and `offline.py` wire them for the two subcommands; `schema.py` documents the JSON.
For the scripts in benchmarks/: `harness.py` starts, waits for and stops the servers they measure, and
`loopback.py` is the load generator cheap enough to measure a proxy in microseconds.
"""
