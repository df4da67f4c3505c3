"""LLM request metrics (issue 16): what is logged is taken, what is not is derived, after the
plausibility bounds dropped what they drop."""

from __future__ import annotations

import pytest

from tests.integration.support import total
from tests.unit.test_plausible import _record, _scrape


def test_time_per_output_token_and_tokens_per_second_are_taken_or_derived() -> None:
    s = _scrape(
        {},
        [
            # Derived: (1000 - 200) / (5 - 1) = 200 ms a token; 5 tokens in 1 s.
            _record(0, latency_ms=1000.0, ttft_ms=200.0, tokens_out=5),
            # Logged values win.
            _record(1, latency_ms=1000.0, ttft_ms=200.0, tokens_out=5, tpot_ms=150.0, tokens_per_second=8.0),
            # One output token: no gap between tokens to derive from; 1 token in 1 s.
            _record(2, latency_ms=1000.0, ttft_ms=200.0, tokens_out=1),
            # An implausible latency is dropped first: nothing is derived from it.
            _record(3, latency_ms=1e308, ttft_ms=200.0, tokens_out=5),
            _record(4, queue_ms=30.0, decode_ms=700.0, tokens_in=100, finish_reason="length"),
            _record(5, finish_reason="stop"),
            _record(6, finish_reason="stop"),
        ],
    )

    def histogram(family: str) -> tuple[float, float]:
        return total(s, f"{family}_count"), total(s, f"{family}_sum")

    assert histogram("inferwatch_llm_time_per_output_token_seconds") == (2, pytest.approx(0.35))
    assert histogram("inferwatch_llm_output_tokens_per_second") == (3, pytest.approx(14.0))
    assert histogram("inferwatch_llm_queue_time_seconds") == (1, pytest.approx(0.03))
    assert histogram("inferwatch_llm_decode_time_seconds") == (1, pytest.approx(0.7))
    assert histogram("inferwatch_llm_prompt_length_tokens") == (1, 100)
    assert histogram("inferwatch_llm_output_length_tokens") == (4, 16)
    assert total(s, "inferwatch_values_out_of_range_total") == 1
    assert total(s, "inferwatch_events_total") == 7
    finished = "inferwatch_llm_finish_reasons_total"
    assert (total(s, finished, finish_reason="length"), total(s, finished, finish_reason="stop")) == (1, 2)
    assert total(s, finished) == 3
