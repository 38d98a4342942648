"""What a researcher runs around the decoders: the timing harness, the bench, breakdowns, acceptance,
evaluation and scoring, reports, datasets and notebook parameters."""
