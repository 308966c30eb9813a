"""Guided decoding: constraints (JSON schema, regex, choice, grammar) compiled to llguidance grammars,
and per-sequence matchers whose token masks the sampler applies."""
