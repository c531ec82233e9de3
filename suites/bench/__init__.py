"""Benchmarks (marker `bench`): pytest-benchmark records with roofline fractions and a machine
fingerprint; `nox -s bench` stores each run under reports/history/<machine-id>/."""
