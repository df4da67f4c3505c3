"""The one config tree: pydantic, frozen, unknown keys rejected; YAML plus environment overrides.

Environment overrides use the prefix ``INFERWATCH__`` and ``__`` between levels, for example
``INFERWATCH__SOURCE__KAFKA__BOOTSTRAP_SERVERS=kafka-0:9092,kafka-1:9092``. Values are read as
YAML scalars, so numbers and booleans work as expected.
"""

from __future__ import annotations

import base64
import importlib.util
import itertools
import os
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from daemon.ingest import formats
from daemon.ingest import topics as topic_entries

ENV_PREFIX = "INFERWATCH__"
# Keys whose values are SecretStr: never echoed in an error message.
SECRET_KEYS = frozenset({"password", "secret", "token"})

# Times (latency, TTFT, time per output token, queue and decode time): 1-2-5 steps from 1 ms to
# 10 min, so that a classic model's milliseconds and an LLM's minutes both have buckets (18).
DEFAULT_LLM_TIME_BUCKETS = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 600.0,
)  # fmt: skip
DEFAULT_LATENCY_BUCKETS = DEFAULT_TTFT_BUCKETS = DEFAULT_LLM_TIME_BUCKETS
DEFAULT_SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# Prompt and output lengths, tokens: 1-2-5 steps from 1 to 200,000.
DEFAULT_TOKEN_BUCKETS = (
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5,
)  # fmt: skip
# Output tokens per second of a request: 1-2-5 steps from 1 to 10,000.
DEFAULT_TOKENS_PER_SECOND_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1e3, 2e3, 5e3, 1e4)


MIN_MS_PER_RECORD = 1


def _csv(v: Any) -> Any:
    """A comma-separated string (as an environment override gives it) as a tuple; else as is."""
    return tuple(s.strip() for s in v.split(",") if s.strip()) if isinstance(v, str) else v


# A tuple that an environment override may also give as "a,b,c".
Csv = Annotated[tuple[str, ...], BeforeValidator(_csv)]


def _host_port(text: str) -> bool:
    """host:port, the host a name, IPv4 or [IPv6] address, the port 1-65535 (no scheme, no path)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host or "/" in host:
        return False
    if host.startswith("["):
        return host.endswith("]") and len(host) > 2
    return ":" not in host and " " not in host


class ConfigError(Exception):
    """Bad config: the message names each field, the bad value and what is allowed."""


class _Section(BaseModel):
    # coerce_numbers_to_str: `group_id: 123` (or INFERWATCH__..._GROUP_ID=123) means the string.
    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True)


class KafkaConfig(_Section):
    bootstrap_servers: Csv = ("127.0.0.1:9092",)
    # A name, or a regular expression starting with ^ for every topic it matches (seldon's model
    # topics: '^seldon\.prod\.model\..+\.(inputs|outputs)$'); daemon/ingest/topics.py.
    topics: Csv = ("inference-logs",)
    group_id: str = "inferwatch"
    client_id: str = "inferwatch"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # Bounds the work in hand per poll; at >=100k events/s a 2,000-record batch is ~20 ms,
    # far inside max_poll_interval_ms.
    max_poll_records: int = Field(2000, ge=1, le=100_000)
    max_poll_interval_ms: int = Field(300_000, ge=1_000)
    session_timeout_ms: int = Field(10_000, ge=1_000)
    poll_timeout_ms: int = Field(500, ge=10, le=10_000)
    request_timeout_ms: int = Field(305_000, ge=1_000)
    # A commit that cannot finish (broker away) gives up after this and is retried later, so the
    # loop keeps turning and /healthz stays truthful.
    commit_timeout_ms: int = Field(5_000, ge=100)
    # Processed offsets are committed at most this often (and always on revoke and shutdown):
    # a synchronous commit per batch cost ~5% of end-to-end throughput. 0 commits every batch.
    commit_interval_ms: int = Field(1_000, ge=0)
    # The consumer (kafka-python: fetching and parsing records in pure Python) runs in a child
    # process, which hands raw records over, so that parsing overlaps with the pipeline on
    # another core. false: in the daemon's own process (one core's worth of CPU for both).
    consumer_process: bool = True
    # Event-time order across partitions (daemon/ingest/align.py): a partition whose newest record
    # time is more than this ahead of the slowest partition with records left to read is paused
    # until that one catches up, so a backlog replays in time order across partitions and topics.
    max_time_skew_ms: int = Field(1_000, ge=0)
    # Producers do not key records by model (they key by request id, or not at all): re-key them by
    # model through the internal topic <group_id>-inferwatch-repartition, so that each model's state
    # lives in one place (daemon/ingest/repartition.py). false: the input is keyed by model.
    repartition: bool = False
    # The client library: kafka-python (default) or confluent (librdkafka; the confluent extra).
    client: Literal["kafka-python", "confluent"] = "kafka-python"
    # Static membership (confluent only): this replica's stable name in the group, such as the pod's
    # name (deploy/kubernetes sets it from metadata.name). A replica restarted under the same name
    # gets its partitions back without a rebalance; each replica needs its own. None: dynamic.
    group_instance_id: str | None = Field(None, min_length=1, max_length=249)
    # confluent only: rebalance cooperatively (only the partitions that change owner stop) where
    # state allows it, with one stateful topic (repartition on, or one input and no labels topic);
    # otherwise, and always with kafka-python, eager with the range assignor.
    cooperative: bool = True

    @field_validator("bootstrap_servers", "topics")
    @classmethod
    def _non_empty(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("needs at least one entry")
        return v

    @field_validator("topics")
    @classmethod
    def _patterns(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        topic_entries.check(v)
        return v

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_ports(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not all(map(_host_port, v)):
            raise ValueError("each entry is host:port, without a scheme or a path, such as kafka-0.kafka:9092")
        return v

    @model_validator(mode="after")
    def _timeouts(self) -> KafkaConfig:
        # A polled batch must be processed before max_poll_interval_ms or the group evicts us.
        # 1 ms per record assumes >=1,000 events/s on a starved core (we do >100k/s normally).
        if self.max_poll_interval_ms < self.max_poll_records * MIN_MS_PER_RECORD:
            raise ValueError(
                f"max_poll_interval_ms ({self.max_poll_interval_ms}) must be at least max_poll_records "
                f"({self.max_poll_records}) x {MIN_MS_PER_RECORD} ms, so no batch outlives it; "
                "raise max_poll_interval_ms or lower max_poll_records"
            )
        if self.request_timeout_ms <= self.session_timeout_ms:
            raise ValueError(
                f"request_timeout_ms ({self.request_timeout_ms}) must exceed session_timeout_ms "
                f"({self.session_timeout_ms}), as kafka-python requires"
            )
        if self.group_instance_id is not None and self.client != "confluent":
            raise ValueError(
                "group_instance_id (static membership) needs client: confluent; kafka-python 2.2 does "
                "not support it. Set client: confluent, or remove group_instance_id"
            )
        if self.client == "confluent" and importlib.util.find_spec("confluent_kafka") is None:
            raise ValueError("client: confluent needs the confluent-kafka package: pip install 'inferwatch[confluent]'")
        return self


class FormatConfig(_Section):
    """How a topic's records become events (docs/formats.md): `native` (the schema), `mapped`
    (any JSON, by `fields` and `features`), `openai` (responses of OpenAI-compatible servers;
    `fields` adds to and overrides its defaults), `cloudevents-inference` (KServe's logger) or
    `seldon` (Seldon Core 2's model topics)."""

    model_config = ConfigDict(frozen=True, extra="forbid")  # constants keep their types
    type: Literal["native", "mapped", "openai", "cloudevents-inference", "seldon"] = "native"
    # Schema field -> a path ("a.b[0].c"), {path | header | const, unit}, or a list tried in order.
    fields: dict[str, Any] = {}
    # A path to a map of features, or feature name -> path.
    features: str | dict[str, str] | None = None
    # cloudevents-inference and seldon: how long a request or response waits for its other half,
    # and how many may wait per partition (seldon: per model), the oldest out first, counted as
    # unmatched; the names of the features of a list row (V1 instances, a V2 tensor of several
    # values per row).
    join_ttl_seconds: float = Field(60.0, gt=0)
    join_max_pending: int = Field(10_000, ge=1)
    feature_names: list[str] | None = None

    @model_validator(mode="after")
    def _builds(self) -> FormatConfig:
        if self.type not in formats.PAIRED and self.feature_names is not None:
            raise ValueError(
                "feature_names names list rows of cloudevents-inference and seldon; mapped names features itself"
            )
        formats.build(self.type, self.fields, self.features)
        return self

    def build(self) -> Any:
        """A decoder of this format (None: native); a paired one holds the halves that wait."""
        join = {
            "ttl_s": self.join_ttl_seconds,
            "max_pending": self.join_max_pending,
            "feature_names": self.feature_names,
        }
        return formats.build(self.type, self.fields, self.features, join)


class SourceConfig(_Section):
    kafka: KafkaConfig = KafkaConfig()
    # The format of every input topic, unless `formats` names the topic's own.
    format: FormatConfig = FormatConfig()
    formats: dict[str, FormatConfig] = {}

    @model_validator(mode="after")
    def _formats(self) -> SourceConfig:
        unknown = sorted(set(self.formats) - set(self.kafka.topics))
        if unknown:
            raise ValueError(
                f"formats names {', '.join(unknown)}, not among kafka.topics ({', '.join(self.kafka.topics)}): "
                "a format is for an input topic"
            )
        if self.kafka.repartition and any(f.type != "native" for f in (self.format, *self.formats.values())):
            raise ValueError("kafka.repartition keys native events by model: it does not take other formats yet")
        if self.kafka.repartition and any(map(topic_entries.is_pattern, self.kafka.topics)):
            raise ValueError(
                "kafka.repartition sizes its topic from the inputs' partitions: name the topics, not a pattern"
            )
        return self

    def format_of(self, topic: str) -> FormatConfig:
        """A topic's format: that of its entry in `formats` (a name, or a pattern matching it)."""
        entry = topic_entries.entry_of(self.formats, topic)
        return self.format if entry is None else self.formats[entry]


class DeadLetterConfig(_Section):
    # None disables the dead-letter copy; invalid records are still counted and sampled in logs.
    topic: str | None = None
    # Bytes of invalid records sent but not yet acknowledged (the broker away, say). Past it a
    # record is not copied, counted as outcome="dropped": kafka-python 2.2 ignores the producer's
    # buffer_memory, so without this cap an outage would hold every invalid record in memory.
    max_buffered_bytes: int = Field(16 * 1024 * 1024, ge=1024)


def _long_secret(v: SecretStr) -> SecretStr:
    # Nothing limits the rate of guesses, so a machine credential, not a memorable one.
    if len(v.get_secret_value()) < 16:
        raise ValueError("must be at least 16 characters")
    return v


class BasicAuthConfig(_Section):
    """HTTP basic auth on GET /metrics and /v1/*; /healthz and /readyz stay open for the kubelet's probes."""

    username: str = Field(min_length=1)
    # Or password_file: a file holding it (a mounted Secret; Prometheus' basic_auth.password_file can be it).
    password: Annotated[SecretStr, AfterValidator(_long_secret)]
    password_file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _password_file(cls, data: Any) -> Any:
        return _from_file(data, "password")

    @field_validator("username")
    @classmethod
    def _no_colon(cls, v: str) -> str:
        if ":" in v:
            raise ValueError("must not contain ':', which ends the user-id in basic auth (RFC 7617)")
        return v


def _load_pem(field: str, path: str, what: str, load: Callable[[str], object]) -> None:
    try:
        load(path)
    except OSError as exc:  # ssl.SSLError is one
        raise ValueError(f"{field}: cannot load {path} as {what}: {exc.strerror or exc}") from None


class TlsConfig(_Section):
    """HTTPS (TLS 1.2 or later) on the HTTP listener(s), as Prometheus exporters' tls_server_config."""

    # PEM files, read at start-up: restart to serve a renewed certificate.
    cert_file: str
    key_file: str
    # Optional: CA certificates that client certificates must chain to (mutual TLS). Clients
    # without one reach only /healthz and /readyz (the kubelet's probes present none).
    client_ca_file: str | None = None

    @model_validator(mode="after")
    def _loads(self) -> TlsConfig:
        self.ssl_context()  # bad files fail at start-up and in check-config, not at the first scrape
        return self

    def ssl_context(self) -> ssl.SSLContext:
        """The listeners' server context; ValueError naming the field whose file does not load."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # The certificate alone first, so that a failure of the pair below is the key's.
        check = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        _load_pem("cert_file", self.cert_file, "a PEM certificate", check.load_verify_locations)
        # password "": an encrypted key fails here instead of prompting on a terminal.
        key = "the unencrypted PEM private key of cert_file"
        _load_pem("key_file", self.key_file, key, lambda k: context.load_cert_chain(self.cert_file, k, password=""))
        if self.client_ca_file is not None:
            _load_pem("client_ca_file", self.client_ca_file, "PEM CA certificates", context.load_verify_locations)
            context.verify_mode = ssl.CERT_OPTIONAL  # a certificate given is verified; routes ask for one
        return context


# Addresses that bind every interface.
_ANY_HOST = frozenset({"", "0.0.0.0", "::"})


class HttpConfig(_Section):
    # All interfaces, like other exporters: Prometheus scrapes the pod IP.
    host: str = "0.0.0.0"
    port: int = Field(9108, ge=0, le=65535)
    # With metrics_port, /metrics (only it) is served on a listener of its own at
    # metrics_host:metrics_port (metrics_host defaults to host), e.g. 127.0.0.1 for a local agent.
    metrics_host: str | None = None
    metrics_port: int | None = Field(None, ge=0, le=65535)
    basic_auth: BasicAuthConfig | None = None
    tls: TlsConfig | None = None
    # Bearer token of the admin routes (POST /v1/drift/reference); off without one. admin_token_file:
    # a file holding it (a mounted Secret).
    admin_token: Annotated[SecretStr, AfterValidator(_long_secret)] | None = None
    admin_token_file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _admin_token_file(cls, data: Any) -> Any:
        return _from_file(data, "admin_token")

    @model_validator(mode="after")
    def _metrics_listener(self) -> HttpConfig:
        if self.metrics_host is not None and self.metrics_port is None:
            raise ValueError("metrics_host needs metrics_port, the port of the separate /metrics listener")
        metrics_host = self.metrics_host or self.host
        overlap = metrics_host == self.host or bool({metrics_host, self.host} & _ANY_HOST)
        if self.metrics_port == self.port != 0 and overlap:
            raise ValueError(
                f"metrics_port ({self.metrics_port}) equals port on an overlapping address ({metrics_host} and "
                f"{self.host}); give /metrics a port of its own, or unset metrics_port to serve it on port"
            )
        return self


def _increasing(v: tuple[float, ...]) -> tuple[float, ...]:
    if not v:
        raise ValueError("needs at least one bucket bound")
    if any(b <= a for a, b in itertools.pairwise(v)):
        raise ValueError("bucket bounds must be strictly increasing")
    return v


Buckets = Annotated[tuple[float, ...], AfterValidator(_increasing)]


class ModelBuckets(_Section):
    """A model's own bucket bounds for some histograms; unset: the global ones."""

    latency_buckets_seconds: Buckets | None = None
    ttft_buckets_seconds: Buckets | None = None
    score_buckets: Buckets | None = None
    llm_time_buckets_seconds: Buckets | None = None
    token_buckets: Buckets | None = None
    tokens_per_second_buckets: Buckets | None = None


class MetricsConfig(_Section):
    latency_buckets_seconds: Buckets = DEFAULT_LATENCY_BUCKETS
    ttft_buckets_seconds: Buckets = DEFAULT_TTFT_BUCKETS
    score_buckets: Buckets = DEFAULT_SCORE_BUCKETS
    # Time per output token, queue and decode time.
    llm_time_buckets_seconds: Buckets = DEFAULT_LLM_TIME_BUCKETS
    token_buckets: Buckets = DEFAULT_TOKEN_BUCKETS
    tokens_per_second_buckets: Buckets = DEFAULT_TOKENS_PER_SECOND_BUCKETS
    # model -> bucket bounds of its own for any of the histograms above (the others stay global).
    models: dict[str, ModelBuckets] = {}

    def buckets(self, field: str, model: str | None = None) -> tuple[float, ...]:
        """A histogram's bounds (`field`: one of the *_buckets fields) for `model`."""
        own = self.models.get(model or "")
        bounds: tuple[float, ...] | None = getattr(own, field) if own is not None else None
        return bounds if bounds is not None else getattr(self, field)


class SloTargets(_Section):
    """One model's objectives. Per request (unset: not an objective): an LLM request (one that
    logs TTFT or output tokens) meets `ttft_ms`, `tpot_ms` and `e2e_ms` (its latency); any other
    request meets `latency_ms`. Over requests: `goodput` of them are good (not an error, and
    every per-request objective met), at most `error_rate` are errors, and the realized accuracy
    is at least `accuracy`."""

    latency_ms: float | None = Field(None, gt=0)
    ttft_ms: float | None = Field(None, gt=0)
    tpot_ms: float | None = Field(None, gt=0)
    e2e_ms: float | None = Field(None, gt=0)
    goodput: float = Field(0.99, gt=0, lt=1)
    error_rate: float | None = Field(None, gt=0, lt=1)
    accuracy: float | None = Field(None, gt=0, lt=1)


class SloConfig(_Section):
    """Service-level objectives per model: counted per key (inferwatch_slo_*_requests_total) and
    exported as gauges (inferwatch_slo_objective) for the alert rules to read."""

    # Every model without an entry of its own in `models`.
    default: SloTargets = SloTargets(latency_ms=250, error_rate=0.001, accuracy=0.9)
    # model -> its objectives (the whole set: unset fields are not objectives, not the default's).
    models: dict[str, SloTargets] = {}

    def of(self, model: str) -> SloTargets:
        return self.models.get(model, self.default)


class LimitsConfig(_Section):
    """Cardinality caps. Past a cap, new values fold into `__other__` and a counter says so."""

    max_keys: int = Field(1000, ge=1, description="distinct (model, version, variant)")
    max_classes: int = Field(20, ge=1, description="prediction classes per key")
    max_features: int = Field(64, ge=1, description="features per key")
    # A key tracks a feature (missing counts, a drift stream) once the feature was named in this
    # many of its events and in this share of its events since the first that named it
    # (daemon/monitors/admission.py); and releases it after this many of its events without it
    # (0: never).
    feature_admission_events: int = Field(10, ge=1, description="events naming a feature before it is tracked")
    feature_admission_share: float = Field(0.01, ge=0, le=1, description="share of the key's events naming it")
    feature_release_events: int = Field(100_000, ge=0, description="key events without a feature before release")
    max_error_types: int = Field(20, ge=1, description="error types per key")
    max_finish_reasons: int = Field(10, ge=1, description="LLM finish reasons per key")
    max_event_bytes: int = Field(1_048_576, ge=64, description="larger records are invalid")


class PlausibilityConfig(_Section):
    """Bounds on logged values (daemon.ingest.plausible). A value past its bound is dropped from its
    event and counted in inferwatch_values_out_of_range_total{field}; the rest of the event counts."""

    max_latency_ms: float = Field(3_600_000.0, gt=0, description="latency_ms above this is dropped")
    max_ttft_ms: float = Field(3_600_000.0, gt=0, description="ttft_ms above this is dropped")
    max_tokens: int = Field(10_000_000, ge=1, description="tokens_in/tokens_out above this are dropped")
    # An event's own timestamp further than this ahead of (or behind) its Kafka record's time is
    # replaced by the record's time. Without a record time (replay), 1970-2100 is plausible. No
    # bound behind by default: logs written to Kafka long after the fact (a backfill) are fine.
    max_timestamp_ahead_s: float = Field(300.0, ge=0, description="event time ahead of the record time")
    max_timestamp_behind_s: float | None = Field(None, ge=0, description="event time behind the record time")


class LabelsConfig(_Section):
    """The join of late ground truth to predictions, by request_id."""

    # Topic of label events ({request_id, model, label, timestamp}); None: only labels carried
    # inside inference events are used. Co-partition it with the inference topics when scaling out.
    topic: str | None = None
    # How long a prediction waits for its label; labels after that count as late.
    ttl_seconds: float = Field(86_400.0, gt=0)
    # Predictions waiting for labels, per partition held (the join is partition state); the
    # partition's oldest is evicted (counted) past it.
    max_entries: int = Field(200_000, ge=1)
    # How long a label that came before its prediction is held.
    hold_seconds: float = Field(60.0, gt=0)


class AccuracyConfig(_Section):
    """Windowed quality metrics from joined labels, and the label-free (CBPE) estimate."""

    # The window: the last `window_events` labelled predictions, or (window_events: null) the
    # last `window_seconds` of them by label time.
    window_events: int | None = Field(1000, ge=1)
    window_seconds: float | None = Field(None, gt=0)
    # Positive class for binary precision/recall/F1; default "1", else "true".
    positive_class: str | None = None
    # Features whose levels get their own quality figures, `max_slice_levels` levels each.
    slice_features: Csv = ()
    max_slice_levels: int = Field(10, ge=1, le=1000)
    # Labelled predictions per key that calibrate the accuracy estimate (CBPE).
    estimate_reference_events: int = Field(1000, ge=10)
    # A window's figures (accuracy, F1, ...) are exported once it holds this many labelled
    # predictions; inferwatch_model_performance_samples always shows how many it holds.
    min_samples: int = Field(100, ge=1)

    @model_validator(mode="after")
    def _one_window(self) -> AccuracyConfig:
        if (self.window_events is None) == (self.window_seconds is None):
            raise ValueError(
                "set exactly one of window_events and window_seconds (for a time window, also set window_events: null)"
            )
        return self


class DriftConfig(_Section):
    """Drift detection on every feature, the score, the latency and (with labels) the errors."""

    enabled: bool = True
    # Wanted mean number of events between false alarms on stationary data, per stream (with
    # bonferroni: per key's whole set of features). Thresholds are calibrated to it.
    target_ert_events: int = Field(1_000_000, ge=1_000)
    # The first `reference_events` values of each stream are its reference (or reference_file's).
    reference_events: int = Field(1000, ge=50)
    window_events: int = Field(500, ge=10)
    # JSONL inference events to take references from, per (model, version, variant).
    reference_file: str | None = None
    numeric_detector: str = "scan"
    categorical_detector: str = "scan_categorical"
    error_detector: str = "error_rate"
    # Across a key's features: "bonferroni" calibrates each of m features to m x target_ert_events,
    # so the family raises about one false alarm per target_ert_events; "none" does not.
    multiple_testing: Literal["bonferroni", "none"] = "bonferroni"
    # inferwatch_drift_detected stays 1 this long after a detection (and while the stream re-learns).
    hold_seconds: float = Field(600.0, gt=0)
    # Pinned references neither grow nor are re-learned after a detection: the stream then holds
    # (state "drifted") until its reference is reset (POST /v1/drift/reference). Per stream by API.
    pin_references: bool = False
    # Streams to watch. The LLM ones (time to first token, time per output token, prompt and output
    # length in tokens, the mix of finish reasons) exist for the keys whose events carry them.
    streams: Annotated[
        tuple[
            Literal[
                "features", "score", "latency", "errors",
                "ttft", "tpot", "prompt_tokens", "output_tokens", "finish_reason",
            ],
            ...,
        ],
        BeforeValidator(_csv),
    ] = (
        "features", "score", "latency", "errors", "ttft", "tpot", "prompt_tokens", "output_tokens", "finish_reason"
    )  # fmt: skip

    @model_validator(mode="after")
    def _detectors(self) -> DriftConfig:
        from detectors.calibration import NOT_CALIBRATABLE
        from detectors.registry import DETECTORS

        for field, kind in (
            ("numeric_detector", "numeric"),
            ("categorical_detector", "categorical"),
            ("error_detector", "binary"),
        ):
            name = getattr(self, field)
            fits = sorted(
                n
                for n, c in DETECTORS.items()
                if getattr(c, "input_kind") == kind and n not in NOT_CALIBRATABLE  # noqa: B009
            )
            if name not in fits:
                why = f" ({NOT_CALIBRATABLE[name]})" if name in NOT_CALIBRATABLE else ""
                raise ValueError(f"{field}={name!r} is not a calibratable {kind} detector{why}; choose one of {fits}")
        return self


CanaryMetric = Literal[
    "error_rate",
    "latency", "latency_tail", "latency_tail_share",
    "ttft", "ttft_tail", "ttft_tail_share",
    "tpot", "tpot_tail", "tpot_tail_share",
    "goodput",
    "accuracy",
    "prediction_shift",
]  # fmt: skip


class CanaryConfig(_Section):
    """Always-valid canary verdicts: each variant of a model against its baseline."""

    enabled: bool = True
    # False-fail rate of a verdict, however often it is read; also the BH level across metrics.
    alpha: float = Field(0.05, gt=0, lt=0.5)
    # model -> baseline variant; otherwise control, baseline, stable or primary, else the busiest.
    baselines: dict[str, str] = {}
    # Requests per arm before any verdict.
    min_requests: int = Field(500, ge=10)
    # N* of the mSPRT mixing prior: the confidence sequences are tightest near it (per arm).
    planned_requests: int = Field(5_000, ge=100)
    # A model's comparisons are read after every this many of its requests, with the figures as
    # they stood at that request: verdicts do not depend on how polls cut the stream.
    look_every_requests: int = Field(100, ge=1)
    # How much worse a candidate may be: relative for latency, TTFT and time per output token
    # (their means of logs), absolute for error rate, accuracy and the prediction shift.
    latency_tolerance: float = Field(0.05, ge=0)
    error_rate_tolerance: float = Field(0.002, ge=0)
    # The tail tests, against the baseline's `tail_quantile` (its first `min_requests` values,
    # then frozen): how far the requests past it go (the mean of ln(value / line)), with
    # `tail_tolerance` the relative slowdown they may have; and the share of requests past it,
    # which may grow by `tail_share_tolerance` (absolute).
    tail_quantile: float = Field(0.99, gt=0.5, lt=1)
    tail_tolerance: float = Field(0.05, ge=0)
    tail_share_tolerance: float = Field(0.01, ge=0)
    # Goodput (config slo: not an error, and every per-request objective met) may fall this much.
    goodput_tolerance: float = Field(0.01, ge=0)
    accuracy_tolerance: float = Field(0.01, ge=0)
    # A label counts towards a canary's accuracy when its prediction's model has run this far past
    # the prediction in event time; one that comes later, or is timed more than this after its
    # prediction, is left out (`late_labels` in /v1/canary). So the labels a look counts depend on
    # the events, not on when polls fetched them (docs/operations.md, "Canary verdicts").
    label_wait_seconds: float = Field(300.0, gt=0)
    prediction_shift_tolerance: float = Field(0.05, ge=0)
    # Metrics whose failure fails the verdict at alpha, without waiting for BH across the others.
    critical: Annotated[tuple[CanaryMetric, ...], BeforeValidator(_csv)] = ("error_rate",)
    # Models that log TTFT or time per output token (LLMs): end-to-end latency and its tail grow
    # with the answer's length, so they are reported but do not fail a verdict unless this is on.
    llm_judge_e2e_latency: bool = False


class TensorInput(_Section):
    """One model input: which logged features fill its columns, in order, and how."""

    name: str
    features: Csv
    dtype: Literal["float32", "float64", "float16", "int64", "int32", "int8", "uint8", "bool"] = "float32"
    # Categorical features: value -> code. A feature whose logged values are strings needs one.
    encodings: dict[str, dict[str, float]] = {}
    # The code for a categorical value missing from its table.
    unknown_code: float = -1
    # A feature absent or null in the logged event.
    missing_value: float = 0.0

    @field_validator("features")
    @classmethod
    def _some(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("needs at least one feature")
        if len(set(v)) != len(v):
            raise ValueError("lists a feature twice")
        return v

    @model_validator(mode="after")
    def _encoded_features_are_inputs(self) -> TensorInput:
        extra = sorted(set(self.encodings) - set(self.features))
        if extra:
            raise ValueError(f"encodings for {extra} that are not among this input's features")
        return self


class ShadowModel(_Section):
    """A model the shadow runner loads and replays logged inputs through."""

    name: str
    runtime: Literal["onnxruntime", "torch"]
    # An ONNX file (onnxruntime); a TorchScript file or a torch.export program (.pt2) (torch).
    path: str
    role: Literal["production", "candidate"] = "production"
    # The logged model (the events' `model`) whose recent inputs feed it.
    source_model: str
    # The skew check compares this model's outputs with the predictions logged by this variant
    # (a production model against a model with a canary beside it); None: every logged one.
    source_variant: str | None = None
    inputs: tuple[TensorInput, ...]
    task: Literal["classification", "regression"] = "classification"
    # The output to read: its position, or its name (ONNX output names).
    output: int | str = 0
    # Class labels by output column (or by index for an integer output); [] gives the index.
    # A one-column float output is a score: classes[1] when >= threshold, else classes[0].
    classes: tuple[str | int | bool, ...] = ()
    threshold: float = 0.5
    # auto: CUDA when the runtime offers it and shadow.allow_cuda, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Defaults to shadow.threads; may not exceed it.
    intra_op_threads: int | None = Field(None, ge=1)
    inter_op_threads: int = Field(1, ge=1)

    @field_validator("output", mode="before")
    @classmethod
    def _position(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool) and v < 0:
            raise ValueError("a position counts from 0; name the output to be explicit")
        return v

    @field_validator("inputs")
    @classmethod
    def _distinct(cls, v: tuple[TensorInput, ...]) -> tuple[TensorInput, ...]:
        if not v:
            raise ValueError("needs at least one input mapping")
        names = [i.name for i in v]
        if len(set(names)) != len(names):
            raise ValueError(f"names an input twice: {names}")
        return v


class SingleStreamConfig(_Section):
    # MLPerf's early-stopping minimum for a p99 at 99% confidence.
    min_queries: int = Field(662, ge=1)
    min_duration_seconds: float = Field(3.0, ge=0)
    # Stability (Triton perf_analyzer): the last 3 windows' p50 within stability_tolerance.
    window_seconds: float = Field(1.0, gt=0)
    stability_tolerance: float = Field(0.10, gt=0)
    # Past this many windows an unstable run stops and is flagged `unstable`.
    max_windows: int = Field(10, ge=3)
    # Hard stop for a slow model that cannot reach min_queries (flagged `unstable`).
    max_duration_seconds: float = Field(120.0, gt=0)


class OfflineConfig(_Section):
    enabled: bool = True
    batch_sizes: Annotated[tuple[int, ...], BeforeValidator(_csv)] = (1, 8, 32)
    duration_seconds: float = Field(1.0, gt=0)

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(b < 1 for b in v):
            raise ValueError("batch sizes must be >= 1")
        return v


class ServerConfig(_Section):
    """MLPerf Server: Poisson arrivals at target_qps; valid when p99 <= latency_bound_ms."""

    enabled: bool = False
    target_qps: float = Field(100.0, gt=0)
    latency_bound_ms: float = Field(50.0, gt=0)
    queries: int = Field(1_000, ge=1)


class ShadowConfig(_Section):
    enabled: bool = False
    models: tuple[ShadowModel, ...] = ()
    # Recent real inputs kept per logged model (a uniform sample, Algorithm L).
    reservoir_size: int = Field(2_000, ge=1, le=1_000_000)
    # Runs start every interval plus a uniform 0..jitter delay (replicas do not run in step).
    interval_seconds: float = Field(3_600.0, gt=0)
    jitter_seconds: float = Field(300.0, ge=0)
    # A run is skipped until each model's source has this many samples.
    min_samples: int = Field(100, ge=1)
    # The runner process's whole thread budget (OMP/MKL too), and its niceness.
    threads: int = Field(1, ge=1)
    nice: int = Field(10, ge=0, le=19)
    allow_cuda: bool = True
    # A run that takes longer is killed and counted as failed.
    timeout_seconds: float = Field(600.0, gt=0)
    warmup_queries: int = Field(100, ge=0)
    single_stream: SingleStreamConfig = SingleStreamConfig()
    offline: OfflineConfig = OfflineConfig()
    server: ServerConfig = ServerConfig()
    # Candidate vs production: interleaved query pairs on identical inputs, spread over
    # compare_sessions fresh loads of both models (two loads of one file can differ by a few
    # tenths of a percent, and the interval must hold that), and bootstrap resamples of the ratio.
    compare_queries: int = Field(1_000, ge=10)
    compare_sessions: int = Field(4, ge=1, le=20)
    bootstrap_resamples: int = Field(2_000, ge=100)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    # Serving skew: a replayed output differs from the logged prediction beyond these
    # (regression: atol + rtol * |logged|); the check is flagged above skew_tolerance of samples.
    skew_tolerance: float = Field(0.01, ge=0, le=1)
    skew_atol: float = Field(1e-6, ge=0)
    skew_rtol: float = Field(1e-4, ge=0)
    # Results per (model, hardware) survive restarts here; a run's p99 is a regression when it
    # exceeds the median of the last `regression_runs` stable runs by more than
    # max(regression_tolerance, 3 robust sd). Needs regression_min_runs earlier runs.
    history_file: str = "inferwatch-shadow-history.json"
    regression_runs: int = Field(10, ge=1)
    regression_min_runs: int = Field(3, ge=1)
    regression_tolerance: float = Field(0.10, ge=0)
    # Price of the hardware per hour (any currency): cost per 1,000 inferences. None: not reported.
    hourly_price: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _models(self) -> ShadowConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        if self.enabled and not self.models:
            raise ValueError("enabled needs at least one entry in shadow.models")
        torch_threads = sorted({m.intra_op_threads or self.threads for m in self.models if m.runtime == "torch"})
        if len(torch_threads) > 1:
            raise ValueError(
                f"torch models ask for different intra_op_threads {torch_threads}; torch has one thread pool per "
                "process, so give them the same value"
            )
        for i, m in enumerate(self.models):
            if m.intra_op_threads is not None and m.intra_op_threads > self.threads:
                raise ValueError(
                    f"models[{i}] ({m.name}): intra_op_threads={m.intra_op_threads} exceeds shadow.threads="
                    f"{self.threads}; raise shadow.threads or lower intra_op_threads"
                )
        return self


def _whsec(v: SecretStr) -> SecretStr:
    """A Standard Webhooks secret: whsec_ + base64 of the key (at least 16 bytes)."""
    raw = v.get_secret_value()
    try:
        key = base64.b64decode(raw.removeprefix("whsec_"), validate=True)
    except ValueError:
        raise ValueError("must be whsec_ followed by base64 (the Standard Webhooks secret format)") from None
    if not raw.startswith("whsec_") or len(key) < 16:
        raise ValueError("must be whsec_ followed by the base64 of at least 16 random bytes")
    return v


def _from_file(data: Any, key: str) -> Any:
    """`<key>_file: PATH` (a mounted Secret) read into `<key>`; both given is an error."""
    if not isinstance(data, dict) or data.get(f"{key}_file") is None:
        return data
    if data.get(key) is not None:
        raise ValueError(f"give {key} or {key}_file, not both")
    path = data[f"{key}_file"]
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"{key}_file: cannot read {path}: {exc.strerror}") from None
    return {**data, key: value}


class WebhookEndpoint(_Section):
    """Where retraining triggers are delivered, signed as Standard Webhooks."""

    name: str
    url: str
    # The Standard Webhooks secret, or secret_file: a file holding it (a mounted Kubernetes Secret).
    secret: Annotated[SecretStr, AfterValidator(_whsec)]
    secret_file: str | None = None
    timeout_seconds: float = Field(10.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _secret_file(cls, data: Any) -> Any:
        return _from_file(data, "secret")

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v


class RetrainingPolicy(_Section):
    """Which alerts trigger a retraining webhook, how long they must last, and how often per model."""

    name: str
    # Alert names (as Alertmanager delivers them to POST /v1/alertmanager) that fire this policy.
    # Alerts without a `model` label are ignored: a retraining job is per model.
    alerts: Csv
    # How long an alert must have been firing (since its startsAt) before it triggers.
    sustained_seconds: float = Field(0.0, ge=0)
    # After a trigger for a model, this policy does not trigger again for it for this long.
    cooldown_seconds: float = Field(86_400.0, ge=0)
    # Names of retraining.endpoints to deliver to; empty: all of them.
    endpoints: Csv = ()

    @field_validator("alerts")
    @classmethod
    def _some(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("needs at least one alert name")
        return v


class RetrainingConfig(_Section):
    enabled: bool = False
    policies: tuple[RetrainingPolicy, ...] = ()
    endpoints: tuple[WebhookEndpoint, ...] = ()
    # The durable outbox (SQLite): triggers and deliveries survive restarts. Put it on a volume.
    outbox_file: str = "inferwatch-outbox.sqlite3"
    # Retries: exponential backoff with full jitter from initial to max; Retry-After honoured.
    initial_backoff_seconds: float = Field(1.0, gt=0)
    max_backoff_seconds: float = Field(300.0, gt=0)
    # A delivery still failing after this long is given up (counted as failed).
    give_up_after_seconds: float = Field(7 * 86_400.0, gt=0)

    @model_validator(mode="after")
    def _refs(self) -> RetrainingConfig:
        names = [e.name for e in self.endpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"endpoint names must be unique, got {names}")
        policies = [p.name for p in self.policies]
        if len(set(policies)) != len(policies):
            raise ValueError(f"policy names must be unique, got {policies}")
        for i, p in enumerate(self.policies):
            unknown = sorted(set(p.endpoints) - set(names))
            if unknown:
                raise ValueError(f"policies[{i}] ({p.name}) names unknown endpoints {unknown}; known: {names}")
        if self.enabled and (not self.policies or not self.endpoints):
            raise ValueError("enabled needs at least one entry in retraining.policies and in retraining.endpoints")
        if self.max_backoff_seconds < self.initial_backoff_seconds:
            raise ValueError("max_backoff_seconds must be >= initial_backoff_seconds")
        return self


class ReceiverConfig(_Section):
    """POST /v1/alertmanager: Alertmanager's webhook (payload version 4), bearer-token protected."""

    # Off without a token. Alertmanager sends it with http_config.authorization (type Bearer).
    # token_file: a file holding it (a mounted Secret; Alertmanager's credentials_file can be the same).
    token: Annotated[SecretStr, AfterValidator(_long_secret)] | None = None
    token_file: str | None = None
    max_body_bytes: int = Field(1_048_576, ge=1_024)

    @model_validator(mode="before")
    @classmethod
    def _token_file(cls, data: Any) -> Any:
        return _from_file(data, "token")


PushCondition = Literal["drift", "canary_fail", "shadow_regression", "serving_skew"]


class AlertmanagerPushConfig(_Section):
    """Optional: inferwatch's own alerts sent straight to Alertmanager's API v2 (no Prometheus rules).

    Prefer the rules in deploy/prometheus (they see every replica and keep history); this is for
    setups without them. The alert names match the rules', so routes and retraining policies fit both.
    """

    # Base URLs of every Alertmanager instance (each gets every alert); empty: no push.
    urls: Csv = ()
    conditions: Annotated[tuple[PushCondition, ...], BeforeValidator(_csv)] = (
        "drift",
        "canary_fail",
        "shadow_regression",
        "serving_skew",
    )
    # Firing alerts are re-sent this often (Alertmanager forgets them after their endsAt, which is
    # set to 3 intervals ahead: a daemon that dies lets its alerts resolve by themselves).
    resend_seconds: float = Field(60.0, gt=0)
    timeout_seconds: float = Field(5.0, gt=0)

    @field_validator("urls")
    @classmethod
    def _http(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [u for u in v if not u.startswith(("http://", "https://"))]
        if bad:
            raise ValueError(f"must be http:// or https:// URLs, got {bad}")
        return tuple(u.rstrip("/") for u in v)


class CheckpointConfig(_Section):
    """State with the offsets it reflects, so a restart or a rebalance neither forgets nor double counts.

    Each partition's state is written with its offsets (every interval_seconds, on revoke and at
    shutdown) and restored by whichever replica is assigned the partition. Offsets are committed
    only with a checkpoint, so commits follow interval_seconds, not commit_interval_ms.
    """

    # kafka: a compacted topic on the source's brokers (state follows partitions to any replica).
    # directory: files in `directory` (a single replica, or replicas sharing the volume).
    # off: state starts empty at every start; the consumer resumes at the committed offsets.
    # Unset: directory when `directory` is given, else kafka.
    store: Literal["kafka", "directory", "off"] = "kafka"
    directory: str | None = None
    # Default: "<group_id>-inferwatch-checkpoints".
    topic: str | None = None
    interval_seconds: float = Field(5.0, gt=0)
    # A checkpoint is cut into records of at most this size: keep it under the topic's
    # max.message.bytes (1 MiB by default).
    max_record_bytes: int = Field(512 * 1024, ge=1024)
    # Writing or reading the topic longer than this fails the checkpoint (or the restore).
    timeout_seconds: float = Field(30.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _default_store(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("store") is None:
            return {**data, "store": "directory" if data.get("directory") else "kafka"}
        return data

    @model_validator(mode="after")
    def _directory(self) -> CheckpointConfig:
        if self.store == "directory" and not self.directory:
            raise ValueError("store 'directory' needs checkpoint.directory (a writable directory on a volume)")
        return self


class LifecycleConfig(_Section):
    shutdown_timeout_seconds: float = Field(10.0, gt=0)
    # /healthz fails when the main loop has not completed an iteration for this long.
    watchdog_timeout_seconds: float = Field(30.0, gt=0)


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    # At most one log line per invalid-record reason per this many seconds.
    invalid_sample_seconds: float = Field(10.0, ge=0)


class Config(_Section):
    source: SourceConfig = SourceConfig()
    dead_letter: DeadLetterConfig = DeadLetterConfig()
    http: HttpConfig = HttpConfig()
    metrics: MetricsConfig = MetricsConfig()
    limits: LimitsConfig = LimitsConfig()
    plausibility: PlausibilityConfig = PlausibilityConfig()
    labels: LabelsConfig = LabelsConfig()
    accuracy: AccuracyConfig = AccuracyConfig()
    drift: DriftConfig = DriftConfig()
    canary: CanaryConfig = CanaryConfig()
    slo: SloConfig = SloConfig()
    shadow: ShadowConfig = ShadowConfig()
    retraining: RetrainingConfig = RetrainingConfig()
    receiver: ReceiverConfig = ReceiverConfig()
    alertmanager_push: AlertmanagerPushConfig = AlertmanagerPushConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    lifecycle: LifecycleConfig = LifecycleConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _labels_topic(self) -> Config:
        topic = self.labels.topic
        if topic is not None and topic_entries.entry_of(self.source.kafka.topics, topic) is not None:
            raise ValueError(
                f"labels.topic {topic!r} is also an input topic of source.kafka.topics: labels need a topic of "
                "their own (an inference record read as a label, or a label as an inference, is counted invalid)"
            )
        return self


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        try:
            node[path[-1]] = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            node[path[-1]] = raw
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def _is_section(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _describe(err: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    if not err["loc"]:  # a check across sections: its message names the fields
        return str(err["msg"]).removeprefix("Value error, ")
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        parent: Any = Config
        for part in err["loc"][:-1]:
            field = parent.model_fields.get(str(part)) if _is_section(parent) else None
            parent = field.annotation if field is not None else None
        allowed = ", ".join(parent.model_fields) if _is_section(parent) else "see config/inferwatch.example.yaml"
        return f"{loc}: unknown key. Allowed keys here: {allowed}"
    value = err.get("input")
    if str(err["loc"][-1]) in SECRET_KEYS:
        return f"{loc}: {err['msg']} (value hidden)"
    shown = repr(value) if not isinstance(value, Mapping) else "{...}"
    return f"{loc}: {err['msg']} (got {shown[:80]})"


# Passes of validation, each without the values the last one refused, to find the errors behind
# them: a section's cross-field checks run only once its fields are valid.
MAX_PASSES = 5


def from_mapping(data: Mapping[str, Any]) -> Config:
    """The config, or a ConfigError listing every problem at once: after a pass that fails, the
    refused values are taken out (their defaults stand in) and the rest validated again, so the
    checks that wait for valid fields report too."""
    lines: list[str] = []
    current: Any = data
    for _ in range(MAX_PASSES):
        try:
            config = Config.model_validate(current)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            lines += [line for line in (_describe(e, data) for e in errors) if line not in lines]
            pruned = _without(current, [tuple(e["loc"]) for e in errors])
            if pruned == current:
                break
            current = pruned
            continue
        if not lines:
            return config
        break
    raise ConfigError("invalid config:\n  " + "\n  ".join(lines))


def _without(data: Any, locs: list[tuple[Any, ...]]) -> Any:
    """`data` without the item at each location (a whole section for a section's own check)."""
    if not locs or () in locs:
        return {} if () in locs else data
    if isinstance(data, Mapping):
        return {
            k: _without(v, [loc[1:] for loc in locs if loc and loc[0] == k])
            for k, v in data.items()
            if (k,) not in locs
        }
    if isinstance(data, list):
        return [
            _without(v, [loc[1:] for loc in locs if loc and loc[0] == i])
            for i, v in enumerate(data)
            if (i,) not in locs
        ]
    return data


def load(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Config:
    """Load `path` (YAML; None means defaults), apply environment overrides, then `overrides`
    (a command's flags), validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level, got {type(loaded).__name__}")
        data = loaded or {}
    env = os.environ if environ is None else environ
    return from_mapping(_merge(_merge(data, _env_overrides(env)), overrides or {}))
