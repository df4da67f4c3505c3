"""http.metrics_host/metrics_port, http.basic_auth and http.tls: what config accepts and how it refuses.

Loading real certificates needs openssl: tests/integration/test_http_security.py does that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from daemon.cli import main
from daemon.config import ConfigError, from_mapping, load

PASSWORD = "correct-horse-battery-staple"


def _error(http: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        from_mapping({"http": http})
    return str(err.value)


def test_metrics_listener_is_off_by_default_and_needs_a_port_of_its_own() -> None:
    c = from_mapping({})
    assert c.http.metrics_host is None and c.http.metrics_port is None
    assert "metrics_host needs metrics_port" in _error({"metrics_host": "127.0.0.1"})
    same = "metrics_port (9108) equals port on an overlapping address"
    assert same in _error({"metrics_port": 9108})
    assert same in _error({"host": "127.0.0.1", "metrics_port": 9108})  # 0.0.0.0:9108 holds 127.0.0.1:9108
    assert same in _error({"host": "10.0.0.5", "metrics_host": "10.0.0.5", "metrics_port": 9108})
    assert "metrics_port" in _error({"metrics_port": 70000})
    # Distinct addresses on one port, or two picked ports (0), are fine.
    assert from_mapping({"http": {"host": "10.0.0.5", "metrics_host": "127.0.0.1", "metrics_port": 9108}})
    assert from_mapping({"http": {"port": 0, "metrics_port": 0}}).http.metrics_port == 0


def test_basic_auth_password_from_file_and_environment(tmp_path: Path) -> None:
    (tmp_path / "password").write_text(PASSWORD + "\n")
    c = from_mapping({"http": {"basic_auth": {"username": "prometheus", "password_file": str(tmp_path / "password")}}})
    assert c.http.basic_auth is not None and c.http.basic_auth.password.get_secret_value() == PASSWORD
    assert PASSWORD not in repr(c) and PASSWORD not in str(c.model_dump())
    env = {"INFERWATCH__HTTP__BASIC_AUTH__USERNAME": "prometheus", "INFERWATCH__HTTP__BASIC_AUTH__PASSWORD": PASSWORD}
    assert load(None, env).http.basic_auth == c.http.basic_auth.model_copy(update={"password_file": None})


def test_basic_auth_errors_name_the_field_and_hide_the_password(tmp_path: Path) -> None:
    auth = {"username": "prometheus", "password": PASSWORD}
    assert "password_file: cannot read /nope" in _error({"basic_auth": {"username": "u", "password_file": "/nope"}})
    assert "give password or password_file, not both" in _error({"basic_auth": auth | {"password_file": "/x"}})
    assert "http.basic_auth.password: Field required" in _error({"basic_auth": {"username": "prometheus"}})
    assert "http.basic_auth.username: String should have at least 1 character" in _error(
        {"basic_auth": auth | {"username": ""}}
    )
    assert "must not contain ':'" in _error({"basic_auth": auth | {"username": "a:b"}})
    short = "fifteen-chars-x"
    for bad in (short, [PASSWORD]):
        message = _error({"basic_auth": auth | {"password": bad}})
        assert message.startswith("invalid config:\n  http.basic_auth.password: ") and "(value hidden)" in message
        assert short not in message and PASSWORD not in message
    # receiver.token shares the length rule.
    with pytest.raises(
        ConfigError, match=r"receiver.token: Value error, must be at least 16 characters \(value hidden\)"
    ):
        from_mapping({"receiver": {"token": short}})


def test_tls_files_that_do_not_load_fail_at_start_up_naming_the_field(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    assert "http.tls: Value error, cert_file: cannot load /nope as a PEM certificate: No such file" in _error(
        {"tls": {"cert_file": "/nope", "key_file": "/nope"}}
    )
    assert f"cert_file: cannot load {garbage} as a PEM certificate" in _error(
        {"tls": {"cert_file": str(garbage), "key_file": str(garbage)}}
    )
    assert "http.tls.key_file: Field required" in _error({"tls": {"cert_file": str(garbage)}})


def test_check_config_loads_the_tls_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("http:\n  tls:\n    cert_file: /nope/tls.crt\n    key_file: /nope/tls.key\n")
    with pytest.raises(SystemExit) as exit_:
        main(["check-config", str(config)])
    assert exit_.value.code == 2
    assert "cert_file: cannot load /nope/tls.crt" in capsys.readouterr().err
