from __future__ import annotations

from pathlib import Path

import pytest

from backend.settings import load_worker_settings
from gateway.config import ConfigError
from gateway.settings import load_gateway_settings


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_load_without_a_file() -> None:
    settings = load_gateway_settings(environ={})
    assert settings.port == 8080
    assert settings.upstreams == []


def test_yaml_then_environment_then_overrides(tmp_path: Path) -> None:
    path = write(tmp_path / "g.yaml", "port: 9000\nhost: 0.0.0.0\nlog_level: warning\n")
    environ = {"WARDEN_GATEWAY_PORT": "9100", "WARDEN_GATEWAY_LOG_LEVEL": "error"}
    settings = load_gateway_settings(path, environ=environ, overrides={"port": 9200, "host": None})
    assert settings.port == 9200  # explicit override beats the environment
    assert settings.log_level == "error"  # environment beats the file
    assert settings.host == "0.0.0.0"  # noqa: S104 - an unset override (None) leaves the value


def test_nested_environment_override(tmp_path: Path) -> None:
    path = write(
        tmp_path / "g.yaml",
        "upstreams:\n  - name: local\n    models: [m]\n    workers: ['https://127.0.0.1:1']\n",
    )
    environ = {"WARDEN_GATEWAY_TLS__CERT": "/c.pem", "WARDEN_GATEWAY_TLS__KEY": "/k.pem"}
    settings = load_gateway_settings(path, environ=environ)
    assert settings.tls is not None
    assert settings.tls.cert == Path("/c.pem")
    assert settings.upstreams[0].workers == ["https://127.0.0.1:1"]


def test_secrets_are_masked_in_repr_and_str(tmp_path: Path) -> None:
    environ = {"WARDEN_GATEWAY_REDIS__URL": "redis://:hunter2-secret@127.0.0.1:6379/0"}
    settings = load_gateway_settings(environ=environ)
    assert "hunter2-secret" not in repr(settings)
    assert "hunter2-secret" not in str(settings)
    assert settings.redis.url.get_secret_value().endswith("@127.0.0.1:6379/0")


def test_numeric_looking_secret_stays_a_string() -> None:
    settings = load_gateway_settings(environ={"WARDEN_GATEWAY_REDIS__PASSWORD": "0123"})
    assert settings.redis.password is not None
    assert settings.redis.password.get_secret_value() == "0123"


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("port: many\n", "port: Input should be a valid integer"),
        ("port: 70000\n", "port: Input should be less than or equal to 65535"),
        ("prot: 80\n", "prot: Extra inputs are not permitted"),
        ("log_level: loud\n", "log_level: Input should be 'debug', 'info', 'warning' or 'error'"),
        (
            "upstreams:\n  - name: a\n    models: [m]\n    workers: ['http://w:1']\n",
            "upstreams.0.workers: Value error, worker URL must use https://",
        ),
        (
            "upstreams:\n  - name: a\n    models: [m]\n    workers: ['https://w:1']\n    tls: {cert: /c}\n",
            "upstreams.0.tls: Value error, cert and key must be given together",
        ),
    ],
)
def test_invalid_values_name_the_key_and_expectation(tmp_path: Path, yaml_text: str, expected: str) -> None:
    path = write(tmp_path / "bad.yaml", yaml_text)
    with pytest.raises(ConfigError) as info:
        load_gateway_settings(path, environ={})
    message = str(info.value)
    assert str(path) in message
    assert expected in message


def test_invalid_environment_value_names_the_key() -> None:
    with pytest.raises(
        ConfigError, match=r"limits.max_body_bytes: Input should be greater than or equal to 1024"
    ):
        load_gateway_settings(environ={"WARDEN_GATEWAY_LIMITS__MAX_BODY_BYTES": "10"})


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.yaml", "port: 1\nhost: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: line \d+ is not valid YAML"):
        load_gateway_settings(path, environ={})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read settings file"):
        load_gateway_settings(tmp_path / "absent.yaml", environ={})


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_gateway_settings(write(tmp_path / "list.yaml", "- 1\n- 2\n"), environ={})


def test_worker_refuses_to_run_without_tls_unless_insecure_dev() -> None:
    with pytest.raises(ConfigError, match="serves mTLS only"):
        load_worker_settings(environ={})
    assert load_worker_settings(environ={"WARDEN_WORKER_INSECURE_DEV": "true"}).insecure_dev is True


def test_worker_tls_from_environment() -> None:
    environ = {
        "WARDEN_WORKER_TLS__CERT": "/w.pem",
        "WARDEN_WORKER_TLS__KEY": "/w-key.pem",
        "WARDEN_WORKER_TLS__CA": "/ca.pem",
        "WARDEN_WORKER_TLS__ALLOWED_CLIENTS": "[warden-gateway, other]",
    }
    settings = load_worker_settings(environ=environ)
    assert settings.tls.complete()
    assert settings.tls.allowed_clients == ["warden-gateway", "other"]


def test_the_documented_example_settings_load() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "gateway.example.yaml"
    settings = load_gateway_settings(example, environ={})
    assert [issuer.issuer for issuer in settings.auth.issuers] == [
        "https://login.example.com/realms/acme",
        "https://ci.example.com",
    ]
    assert settings.upstreams[1].api_key is not None
    assert "change-me" not in repr(settings) and "example-only" not in repr(settings)
    assert set(settings.cache.encryption_keys) == {1, 2}
