"""Settings precedence: flags > environment > secrets directory > config file > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.settings import load_settings


def test_precedence_of_every_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each source overrides the ones below it, field by field, nested with __."""
    config = tmp_path / "gss.yaml"
    config.write_text(
        "server: {port: 1111, max_put_records: 7, metrics_port: 1}\n"
        "kafka: {bootstrap_servers: from-file:9092}\n"
        "store: {sync_writes: false}\n"
    )
    monkeypatch.setenv("GSS_SERVER__PORT", "2222")
    monkeypatch.setenv("GSS_SERVER__METRICS_PORT", "3333")

    settings = load_settings(config, server={"metrics_port": 4444})
    assert settings.server.metrics_port == 4444  # flag beats environment
    assert settings.server.port == 2222  # environment beats file
    assert settings.server.max_put_records == 7  # file beats default
    assert settings.store.sync_writes is False
    assert settings.server.host == "127.0.0.1"  # default


def test_secrets_directory_beats_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Kubernetes Secret mounted as files overrides the YAML file."""
    config = tmp_path / "gss.yaml"
    config.write_text("kafka: {bootstrap_servers: from-file:9092}\n")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "kafka__bootstrap_servers").write_text("from-secret:9092")
    (secrets / "kafka__client_config").write_text('{"sasl.password": "s3cret"}')
    monkeypatch.setenv("GSS_SECRETS_DIR", str(secrets))
    kafka = load_settings(config).kafka
    assert kafka.bootstrap_servers == "from-secret:9092"
    assert kafka.client_config == {"sasl.password": "s3cret"}


def test_a_missing_config_file_or_unknown_field_is_an_error(tmp_path: Path) -> None:
    """Typos fail loudly instead of being ignored."""
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    config = tmp_path / "gss.yaml"
    config.write_text("servre: {port: 1}\n")
    with pytest.raises(ValueError, match="servre"):
        load_settings(config)


def test_security_settings_from_secrets_and_a_tls_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SASL password and a static client token come from secret files; a TLS directory
    (a mounted Kubernetes TLS Secret) supplies whichever certificate file is not set."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "kafka__security__sasl_password").write_text("s3cret")
    (secrets / "client__token").write_text("tok")
    tls = tmp_path / "tls"
    tls.mkdir()
    for name in ("tls.crt", "tls.key"):
        (tls / name).write_text("pem")
    monkeypatch.setenv("GSS_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("GSS_SERVER__TLS__DIRECTORY", str(tls))
    settings = load_settings()
    assert settings.kafka.security.sasl_password == "s3cret"
    assert settings.client.token == "tok"
    assert settings.server.tls.files() == (tls / "tls.crt", tls / "tls.key", None)
    assert settings.server.tls.enabled
    assert not settings.client.tls.enabled
    assert settings.server.auth.policy_file is None
