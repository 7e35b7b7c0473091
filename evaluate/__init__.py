"""Stage 6: score sets by downstream training (BENCHMARK.md by default), baselines, metrics, one report."""
