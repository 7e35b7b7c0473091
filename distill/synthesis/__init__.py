"""The distilled set: prototype-guided synthesis, candidate selection, refinement, near-copy checks."""
