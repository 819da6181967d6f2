"""Benchmarks and measurement tools: scripts beside the package, run from the repo root as
`python -m benchmarks.<name>`. They print their figures; BENCHMARKS.md records the current ones."""
