"""Helpers for tests and benchmarks that need a peer process: a fast OpenAI-compatible stub upstream."""
