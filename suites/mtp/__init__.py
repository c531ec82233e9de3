"""Multi-token prediction suites: vLLM's rejection sampler against the speculative-sampling oracle
(reference/speculative.py). Check functions live in checks.py (shared with tests/)."""
