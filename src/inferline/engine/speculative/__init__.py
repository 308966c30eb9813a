"""Speculative decoding: propose a few next tokens cheaply, verify them in one forward pass.

A decoding sequence's chunk [t] becomes [t, d1, ..., dk]: the target model computes all k + 1 rows as
one multi-token chunk, and its logits after each row say which drafts it would have produced itself.

The two halves sit on either side of the runner, and neither imports the other:
  proposers (`ngram`, `draft_model`) fill the lookahead slots the scheduler reserved, while the step
      is scheduled, so the drafts are fields of the SchedulerOutput the runner receives;
  verification (`verify`) turns the target's logits over a verify chunk into accepted tokens, inside
      the runner.
"""
