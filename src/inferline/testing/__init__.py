"""Helpers for tests and benchmarks that need a peer: a fast OpenAI-compatible stub upstream, real message
brokers on loopback (redis-server, nats-server), and a fraud-style ONNX classifier."""
