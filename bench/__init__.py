"""Benchmarks that print figures: `python -m bench` (the pipeline), `python -m bench.detector_models`,
`python -m bench.fuzz`, `python -m bench.soak`."""
