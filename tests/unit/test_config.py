from __future__ import annotations

from pathlib import Path

import pytest

from daemon.cli import main
from daemon.config import Config, ConfigError, from_mapping, load

ROOT = Path(__file__).resolve().parents[2]


def test_no_file_gives_documented_defaults() -> None:
    c = load(None, environ={})
    assert c == Config()
    assert c.source.kafka.topics == ("inference-logs",)
    assert c.source.kafka.auto_offset_reset == "earliest"
    assert c.http.port == 9108 and c.limits.max_keys == 1000


def test_env_overrides_nested_fields_and_csv_lists(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("http:\n  port: 9000\nsource:\n  kafka:\n    group_id: from-file\n")
    c = load(
        f,
        environ={
            "INFERWATCH__HTTP__PORT": "9200",
            "INFERWATCH__SOURCE__KAFKA__BOOTSTRAP_SERVERS": "k0:9092, k1:9092",
            "INFERWATCH__LIMITS__MAX_KEYS": "50",
            "UNRELATED": "x",
        },
    )
    assert c.http.port == 9200
    assert c.source.kafka.bootstrap_servers == ("k0:9092", "k1:9092")
    assert c.source.kafka.group_id == "from-file"
    assert c.limits.max_keys == 50


def test_config_is_frozen() -> None:
    with pytest.raises(Exception, match="frozen"):
        Config().http.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"source": {"kafka": {"max_poll_records": 0}}},
            ["source.kafka.max_poll_records", "greater than or equal to 1", "0"],
        ),
        ({"source": {"kafak": {}}}, ["source.kafak", "unknown key", "Allowed keys here: kafka"]),
        ({"limits": {"max_key": 5}}, ["limits.max_key", "unknown key", "max_keys"]),
        (
            {"source": {"kafka": {"auto_offset_reset": "newest"}}},
            ["auto_offset_reset", "'earliest' or 'latest'", "newest"],
        ),
        ({"metrics": {"latency_buckets_seconds": [1, 0.5]}}, ["latency_buckets_seconds", "strictly increasing"]),
        ({"source": {"kafka": {"topics": []}}}, ["source.kafka.topics", "at least one"]),
        (
            {"source": {"kafka": {"session_timeout_ms": 50000, "request_timeout_ms": 40000}}},
            ["request_timeout_ms", "must exceed session_timeout_ms"],
        ),
        (
            {"source": {"kafka": {"max_poll_records": 50000, "max_poll_interval_ms": 10000}}},
            ["max_poll_interval_ms (10000) must be at least max_poll_records (50000)", "lower max_poll_records"],
        ),
        (
            {"source": {"kafka": {"group_instance_id": "pod-0"}}},
            ["source.kafka", "group_instance_id (static membership) needs client: confluent"],
        ),
        ({"source": {"kafka": {"client": "librdkafka"}}}, ["source.kafka.client", "'kafka-python' or 'confluent'"]),
        (
            {"source": {"kafka": {"bootstrap_servers": ["http://kafka:9092", "nohostport"]}}},
            ["source.kafka.bootstrap_servers", "host:port, without a scheme", "nohostport"],
        ),
        ({"source": {"kafka": {"bootstrap_servers": "kafka:0"}}}, ["bootstrap_servers", "host:port"]),
        ({"source": {"kafka": {"bootstrap_servers": "kafka:9092/x"}}}, ["bootstrap_servers", "host:port"]),
        (
            {"labels": {"topic": "logs"}, "source": {"kafka": {"topics": ["logs"]}}},
            ["labels.topic 'logs' is also an input topic of source.kafka.topics"],
        ),
        (
            {"labels": {"topic": "seldon.x.model.m.inputs"}, "source": {"kafka": {"topics": ["^seldon\\..+"]}}},
            ["labels.topic 'seldon.x.model.m.inputs' is also an input topic"],
        ),
    ],
)
def test_errors_name_field_value_and_fix(data: dict[str, object], expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping(data)
    for fragment in expected:
        assert fragment in str(info.value)


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("source:\n  kafka:\n    topics: [a, b]\n")
    assert main(["check-config", str(good)]) == 0
    assert "ok" in capsys.readouterr().out

    bad = tmp_path / "bad.yaml"
    bad.write_text("http:\n  port: 70000\n")
    with pytest.raises(SystemExit) as info:
        main(["check-config", str(bad)])
    assert info.value.code == 2
    assert "http.port" in capsys.readouterr().err

    for text in ("- a list\n", "a: [unclosed\n"):
        bad.write_text(text)
        with pytest.raises(SystemExit):
            main(["check-config", str(bad)])
    with pytest.raises(SystemExit):
        main(["check-config", str(tmp_path / "missing.yaml")])
    assert "cannot read" in capsys.readouterr().err


def test_example_config_is_valid_and_complete() -> None:
    example = ROOT / "config" / "inferwatch.example.yaml"
    assert load(example, environ={}) == Config(), "the example should spell out the defaults"
    text = example.read_text()
    for section, model in Config.model_fields.items():
        assert f"{section}:" in text
        sub = model.annotation
        for key in getattr(sub, "model_fields", {}):
            if key != "kafka":
                assert f"{key}:" in text, f"example config lacks {section}.{key}"


def test_list_fields_take_comma_separated_environment_overrides() -> None:
    env = {
        "INFERWATCH__ACCURACY__SLICE_FEATURES": "country, device",
        "INFERWATCH__DRIFT__STREAMS": "features,errors",
        "INFERWATCH__CANARY__CRITICAL": "error_rate,latency",
    }
    c = load(None, env)
    assert c.accuracy.slice_features == ("country", "device")
    assert c.drift.streams == ("features", "errors")
    assert c.canary.critical == ("error_rate", "latency")


def test_shadow_config_errors_name_the_field_and_the_fix() -> None:
    model = {
        "name": "m",
        "runtime": "torch",
        "path": "m.pt",
        "source_model": "s",
        "inputs": [{"name": "x", "features": ["a"]}],
    }
    cases = [
        ({"enabled": True}, "shadow: Value error, enabled needs at least one entry in shadow.models"),
        ({"models": [model, model]}, "model names must be unique"),
        ({"models": [model | {"intra_op_threads": 2}]}, "models[0] (m): intra_op_threads=2 exceeds shadow.threads=1"),
        (
            {"threads": 4, "models": [model, model | {"name": "n", "intra_op_threads": 2}]},
            "torch models ask for different intra_op_threads [2, 4]",
        ),
        ({"models": [model | {"inputs": [{"name": "x", "features": ["a", "a"]}]}]}, "lists a feature twice"),
        (
            {"models": [model | {"inputs": [{"name": "x", "features": ["a"], "encodings": {"b": {"u": 1}}}]}]},
            "encodings for ['b'] that are not among this input's features",
        ),
        ({"models": [model | {"output": -1}]}, "shadow.models.0.output"),
        (
            {"models": [model | {"runtime": "tensorflow"}]},
            "shadow.models.0.runtime: Input should be 'onnxruntime' or 'torch'",
        ),
    ]
    for shadow, message in cases:
        with pytest.raises(ConfigError) as err:
            from_mapping({"shadow": shadow})
        assert message in str(err.value), (shadow, str(err.value))


def test_secrets_come_from_files_and_never_show_in_errors(tmp_path: Path) -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    (tmp_path / "secret").write_text(secret + "\n")
    (tmp_path / "token").write_text("a-long-enough-receiver-token\n")
    endpoint = {"name": "ci", "url": "https://ci.example/hook", "secret_file": str(tmp_path / "secret")}
    c = from_mapping({"retraining": {"endpoints": [endpoint]}, "receiver": {"token_file": str(tmp_path / "token")}})
    assert c.retraining.endpoints[0].secret.get_secret_value() == secret
    assert c.receiver.token is not None and c.receiver.token.get_secret_value() == "a-long-enough-receiver-token"
    assert secret not in repr(c) and secret not in str(c.model_dump())
    with pytest.raises(ConfigError, match="secret_file: cannot read /nope"):
        from_mapping({"retraining": {"endpoints": [endpoint | {"secret_file": "/nope"}]}})
    with pytest.raises(ConfigError, match="give secret or secret_file, not both"):
        from_mapping({"retraining": {"endpoints": [endpoint | {"secret": secret}]}})
    with pytest.raises(ConfigError) as err:
        from_mapping({"retraining": {"endpoints": [endpoint | {"secret_file": None, "secret": "whsec_short"}]}})
    assert "whsec_short" not in str(err.value) and "value hidden" in str(err.value)


@pytest.mark.parametrize("servers", [["kafka-0.kafka:9092", "10.0.0.7:9093"], ["[::1]:9092"], "a:1,b:2"])
def test_bootstrap_servers_take_names_and_addresses(servers: object) -> None:
    assert from_mapping({"source": {"kafka": {"bootstrap_servers": servers}}}).source.kafka.bootstrap_servers


def test_every_error_comes_at_once() -> None:
    """A section's cross-field checks wait for its fields to be valid: the errors behind a field
    error come in the same message, not after it is fixed."""
    data = {
        "source": {"kafka": {"max_poll_records": 0, "session_timeout_ms": 50000, "request_timeout_ms": 40000}},
        "labels": {"topic": "inference-logs"},
        "http": {"port": -1},
    }
    with pytest.raises(ConfigError) as info:
        from_mapping(data)
    lines = str(info.value).splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == [
        "source.kafka.max_poll_records",
        "http.port",
        "source.kafka",  # request_timeout_ms must exceed session_timeout_ms: only once max_poll_records passed
        "labels.topic 'inference-logs' is also an input topic of source.kafka.topics",
    ]
