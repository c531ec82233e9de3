"""The synthetic-acceptance oracle (reference/speculative.py: unconditional_to_conditional_rates,
synthetic_accepted_length_law, synthetic_rejection_sample) against its definition: the product
of the conditional rates up to i is the configured unconditional rate r_i; the accepted-length
law's tails are the unconditional rates; the fp64 sampler passes the suite's synthetic law and
its structure check, and ignores p and q."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from reference.speculative import (
    synthetic_accepted_length_law,
    unconditional_to_conditional_rates,
)

RATES = [(0.9, 0.7, 0.5), (1.0, 1.0), (0.6, 0.0), (0.0, 0.0, 0.0), (0.5,), (1.0, 0.25, 0.25, 0.1)]


@pytest.mark.parametrize("rates", RATES)
def test_conditional_rates_multiply_to_the_unconditional_ones(rates):
    c = unconditional_to_conditional_rates(list(rates))
    assert all(0.0 <= x <= 1.0 for x in c)
    prod = 1.0
    for i, r in enumerate(rates):
        prod *= c[i]
        assert prod == pytest.approx(r, abs=1e-15), (i, c)


@pytest.mark.parametrize("rates", RATES)
def test_accepted_length_tails_are_the_unconditional_rates(rates):
    k = len(rates)
    law = synthetic_accepted_length_law(unconditional_to_conditional_rates(list(rates)), k)
    assert float(law.sum()) == pytest.approx(1.0, abs=1e-15)
    tails = law.flip(0).cumsum(0).flip(0)  # P(tau >= j)
    assert torch.allclose(tails[1:], torch.tensor(rates, dtype=torch.float64), atol=1e-15)


@pytest.mark.parametrize("case_index", [0, 1, 2])
def test_reference_sampler_passes_the_synthetic_law(case_index):
    from suites.backends import REGISTRY
    from suites.mtp.test_v2_synthetic_rates import SYNTHETIC_CASES
    from suites.mtp.v2_method_checks import check_synthetic_rates

    b = replace(REGISTRY.get("reference.rejection_sampler"), detect_shift=0.05)
    check_synthetic_rates(b, SYNTHETIC_CASES[case_index], 3)


def test_reference_sampler_is_caught_when_it_accepts_at_the_wrong_rates():
    """The law is not vacuous: a sampler at the unconditional rates (taken as conditional)
    fails it."""
    from suites.backends import REGISTRY
    from suites.mtp.v2_method_checks import SyntheticCase, check_synthetic_rates

    ref = REGISTRY.get("reference.rejection_sampler")

    class Wrong(type(ref)):
        def sample_synthetic(self, batch, seed, rates):
            import itertools

            cum = list(itertools.accumulate(rates, lambda a, b: a * b))  # r as if conditional
            return super().sample_synthetic(batch, seed, cum)

    b = Wrong(name="wrong", detect_shift=0.12, is_reference=True)
    with pytest.raises(AssertionError, match="acceptance at position 1"):
        check_synthetic_rates(b, SyntheticCase("x", (0.9, 0.45, 0.1)), 3)
