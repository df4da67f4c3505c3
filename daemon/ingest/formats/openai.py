"""`openai`: OpenAI-compatible chat and completion responses, as LLM servers and gateways log them.

The response's `id`, `model` and `created`; `usage.prompt_tokens` and `usage.completion_tokens`;
the first choice's `finish_reason`; vLLM's per-request `metrics` block (time to first token,
mean inter-token latency, queue time, generation time, tokens/s); an `error` object's `type`
makes the request an error. Anything else (the variant, the version, the latency when the log
has it) comes from the config's `fields`, which also override these (docs/formats.md).
"""

from __future__ import annotations

from typing import Any

# Schema field -> the path it has in a response (the fields config's shorthand).
FIELDS: dict[str, Any] = {
    "request_id": "id",
    "model": "model",
    "timestamp": {"path": "created", "unit": "s"},
    "tokens_in": "usage.prompt_tokens",
    "tokens_out": "usage.completion_tokens",
    "finish_reason": "choices[0].finish_reason",
    "latency_ms": ["metrics.e2e_latency_ms", "metrics.latency_ms"],  # else derived: see DERIVED
    "ttft_ms": "metrics.time_to_first_token_ms",
    "tpot_ms": "metrics.mean_itl_ms",
    "queue_ms": "metrics.queue_time_ms",
    "decode_ms": "metrics.generation_time_ms",
    "tokens_per_second": "metrics.tokens_per_second",
    "error_type": "error.type",
}

# Derived when the response has none, over the fields above: an error response is an error;
# without a logged latency it is TTFT + generation time (vLLM's TTFT counts from arrival, queue
# included; generation runs from the first token on).
DERIVED = {
    "status": "'error' if error_type is not None else None",
    "latency_ms": "ttft_ms + decode_ms if ttft_ms is not None and decode_ms is not None else None",
}
