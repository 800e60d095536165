"""The one settings object.

Sources, highest precedence first:
1. values passed in code (CLI flags such as ``--port`` land here);
2. environment variables ``GSS_<FIELD>``, nested with ``__`` (``GSS_SERVER__PORT=50051``);
3. files in the secrets directory (``GSS_SECRETS_DIR``, default ``/run/secrets/gss``), one
   file per field named like the variable without prefix (``kafka__sasl_password``);
4. the YAML config file (``-c/--config`` or ``GSS_CONFIG``);
5. the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)


class StoreSettings(BaseModel):
    """RocksDB: where it lives and how durable an acknowledged write is."""

    path: Path = Path("./gss-data/store")
    # True: every applied batch is fsynced before it is acknowledged (survives power loss).
    # False: the WAL is written but not fsynced (survives a process crash, not a power cut).
    sync_writes: bool = True
    block_cache_bytes: int = 512 * 1024 * 1024


class ServerSettings(BaseModel):
    """The gRPC server."""

    host: str = "127.0.0.1"
    port: int = 50051
    # Calls without a client deadline are cut off after this long.
    default_deadline_seconds: float = 10.0
    max_receive_message_bytes: int = 16 * 1024 * 1024
    max_send_message_bytes: int = 64 * 1024 * 1024
    # Cells (entity ids x signals) one GetSignals call may ask for.
    max_lookup_cells: int = 100_000
    # Records one PutSignals call may carry.
    max_put_records: int = 10_000
    # Seconds SIGTERM waits for in-flight calls before closing the store.
    shutdown_grace_seconds: float = 10.0
    # Prometheus metrics over HTTP on the same host; 0 picks a free port, -1 turns it off.
    metrics_port: int = 9464


class KafkaSettings(BaseModel):
    """The Kafka cluster: changelog, availability events, dead letters."""

    # None: no broker; PutSignals applies directly to the store.
    bootstrap_servers: str | None = None
    changelog_topic: str = "gss.{galaxy}.changelog"
    available_topic: str = "gss.{galaxy}.available"
    dlq_topic: str = "gss.{galaxy}.dlq"
    # Passed through to librdkafka as is: security.protocol, sasl.*, ssl.* and the like.
    client_config: dict[str, str] = Field(default_factory=dict)
    # Values at most this large ride inline in availability events (signals that allow it).
    inline_value_max_bytes: int = 4096

    def topic(self, template: str, galaxy: str) -> str:
        return template.format(galaxy=galaxy)


class TritonSettings(BaseModel):
    """Where models are served, and how the model client calls them (docs/models.md)."""

    # host:port of Triton's gRPC endpoint; None starts a local server in `gss run`.
    url: str | None = None
    model_repository: Path = Path(__file__).resolve().parent.parent / "compute" / "models"
    # Local server only: pick configs/<name>.pbtxt per model (e.g. "gpu"); None: config.pbtxt.
    model_config_name: str | None = None
    # Local server only: seconds to wait for every model to be READY.
    startup_timeout_seconds: float = 120.0
    # Client micro-batching: items per Triton request, and how long the first item waits.
    max_batch_size: int = Field(default=32, ge=1)
    max_wait_seconds: float = Field(default=0.005, ge=0)
    # Batches one model may have in flight at once (per client).
    max_in_flight: int = Field(default=2, ge=1)
    # Budget of one call, retries included; each attempt gets what is left.
    deadline_seconds: float = Field(default=10.0, gt=0)
    # Attempts per call on transient errors (UNAVAILABLE, ...), with exponential backoff.
    max_attempts: int = Field(default=4, ge=1)
    retry_backoff_seconds: float = Field(default=0.1, ge=0)
    retry_backoff_max_seconds: float = Field(default=2.0, ge=0)


class ComputeSettings(BaseModel):
    """The Flink job that runs the plugins."""

    # "local" runs a MiniCluster in-process; "remote" submits to jobmanager_address.
    mode: Literal["local", "remote"] = "local"
    jobmanager_address: str | None = None
    checkpoint_interval_seconds: float = 5.0
    state_backend: Literal["hashmap", "rocksdb"] = "hashmap"
    checkpoint_dir: str | None = None
    parallelism: int = 1


class ExportSettings(BaseModel):
    """The daily snapshot export."""

    root: Path = Path("./gss-data/snapshots")
    workers: int = 2


class Settings(BaseSettings):
    """Everything GSS reads at start-up. See the module docstring for precedence."""

    model_config = SettingsConfigDict(
        env_prefix="GSS_",
        env_nested_delimiter="__",
        secrets_dir=os.environ.get("GSS_SECRETS_DIR", "/run/secrets/gss"),
        extra="forbid",
    )

    registry_path: Path = Path(__file__).with_name("registry.yaml")
    log_level: str = "INFO"
    log_format: Literal["json", "console", "auto"] = "auto"
    store: StoreSettings = Field(default_factory=StoreSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    triton: TritonSettings = Field(default_factory=TritonSettings)
    compute: ComputeSettings = Field(default_factory=ComputeSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        secrets_dir = file_secret_settings.config.get("secrets_dir")
        if isinstance(secrets_dir, str | Path) and Path(secrets_dir).is_dir():
            sources.append(file_secret_settings)
        if settings_cls.model_config.get("yaml_file"):
            sources.append(YamlConfigSettingsSource(settings_cls))
        return tuple(sources)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, an optional YAML file and explicit overrides.

    ``overrides`` take nested dicts (``server={"port": 0}``) and win over every other source.
    """
    config_file = config_file or os.environ.get("GSS_CONFIG")
    if not config_file:
        return Settings(**overrides)
    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(
            f"config file {path} does not exist (from -c/--config or GSS_CONFIG)"
        )

    class FileSettings(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "yaml_file": path})

    return FileSettings(**overrides)
