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
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from contract.topics import AVAILABLE_TOPIC, CHANGELOG_TOPIC, DLQ_TOPIC, galaxy_topic


class StoreSettings(BaseModel):
    """RocksDB: where it lives and how durable an acknowledged write is."""

    path: Path = Path("./gss-data/store")
    # True: every applied batch is fsynced before it is acknowledged (survives power loss).
    # False: the WAL is written but not fsynced (survives a process crash, not a power cut).
    sync_writes: bool = True
    # Memory (docs/serving.md, "What bounds a lookup"): one LRU block cache shared by every
    # column family, per serving process (readers of server.processes each have their own).
    block_cache_bytes: int = Field(default=512 * 1024 * 1024, ge=1024 * 1024)
    # Memtables: each column family holds up to max_write_buffers of write_buffer_bytes each
    # (the writer; a reader holds what it has replayed from the WAL since the last flush).
    write_buffer_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    max_write_buffers: int = Field(default=2, ge=2)
    # SST files kept open (their table readers); -1: all. Readers always keep all open
    # (a RocksDB secondary instance needs it), so bound memory by the block cache there.
    max_open_files: int = Field(default=-1, ge=-1)


class TlsSettings(BaseModel):
    """PEM files of one end of a TLS connection (docs/security.md).

    On the server: its certificate chain and key, and the CA whose client certificates it
    accepts (set: mutual TLS, every caller must present a certificate it signed). On a client:
    the CA it trusts for the server (None: the system's roots), and its own certificate and key
    for mutual TLS. ``directory`` names a folder holding ``tls.crt``, ``tls.key`` and ``ca.crt``
    (a Kubernetes TLS Secret as cert-manager writes it), for whichever file is not set. The
    server reads the files again when they change (rotation needs no restart).
    """

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    directory: Path | None = None
    # Client only: the name the server's certificate must carry, when it is not the target's
    # host (e.g. connecting by IP address).
    server_name: str | None = None

    def files(self) -> tuple[Path | None, Path | None, Path | None]:
        """(certificate, key, CA), each from its field or else from ``directory`` if there."""

        def pick(given: Path | None, name: str) -> Path | None:
            if given is not None or self.directory is None:
                return given
            path = self.directory / name
            return path if path.exists() else None

        return (
            pick(self.cert_file, "tls.crt"),
            pick(self.key_file, "tls.key"),
            pick(self.ca_file, "ca.crt"),
        )

    @property
    def enabled(self) -> bool:
        """True if any field is set: TLS is then required (files that turn out missing are an
        error, never a silent fall back to plaintext)."""
        return any(
            value is not None
            for value in (
                self.cert_file,
                self.key_file,
                self.ca_file,
                self.directory,
                self.server_name,
            )
        )


class JwtSettings(BaseModel):
    """Signed bearer tokens (JWT), verified with PyJWT (docs/security.md)."""

    # A JWKS (JSON) or PEM public-key file; read again when it changes. None: no JWTs accepted.
    keys_file: Path | None = None
    # Required claims: a token must carry exactly this issuer and this audience.
    issuer: str | None = None
    audience: str | None = None
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "EdDSA"])
    # Clock skew allowed on exp, nbf and iat.
    leeway_seconds: float = Field(default=30.0, ge=0)
    # The claim holding the token's scopes: a space-separated string or a list.
    scope_claim: str = "scope"


class AuthSettings(BaseModel):
    """Who may call the server and what each caller may do (docs/security.md)."""

    # The policy: per-galaxy read / write / admin grants to identities and token scopes, and
    # static tokens stored as SHA-256 hashes. None: no access control (every caller may do
    # everything, as an anonymous caller).
    policy_file: Path | None = None
    jwt: JwtSettings = Field(default_factory=JwtSettings)
    # Callers with neither a client certificate nor a token. None: allowed without a policy
    # file, refused with one. With a policy, anonymous callers get the grants to "anonymous".
    allow_anonymous: bool | None = None
    # Verified tokens remembered (until they expire), so a token is checked once, not per call.
    token_cache_size: int = Field(default=10_000, ge=1)
    token_cache_seconds: float = Field(default=300.0, gt=0)


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
    # A PutSignals record whose event time is further ahead of the server's clock is refused:
    # under newer-wins it would freeze its value against every later correction.
    max_future_event_seconds: float = Field(default=300.0, ge=0)
    # Calls one caller (identity, or peer address when anonymous) may have in flight; more are
    # refused with RESOURCE_EXHAUSTED, so one client cannot starve the rest.
    max_calls_per_caller: int = Field(default=256, ge=1)
    # A plaintext port serving only grpc.health.v1, for Kubernetes' gRPC probes (which cannot
    # speak TLS); None: health is served on the main port only. 0 picks a free port.
    health_port: int | None = None
    # TLS on the gRPC port (none set: plaintext) and access control.
    tls: TlsSettings = Field(default_factory=TlsSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    # Prometheus metrics over HTTP on the same host; 0 picks a free port, -1 turns it off.
    metrics_port: int = 9464
    # Serving processes on the one port (SO_REUSEPORT): 1 is one process doing everything; N
    # adds N-1 reader processes over RocksDB secondary instances (docs/serving.md, "What
    # bounds a lookup"). Writes, the ingester and the publisher stay in the first process.
    processes: int = Field(default=1, ge=1, le=64)
    # A reader that has not caught up with a write this long after it was asked to (or whose
    # heartbeat stopped) is killed and replaced, so it never holds events back nor serves a
    # stale view of an announced value.
    reader_catch_up_timeout_seconds: float = Field(default=2.0, gt=0)


class KafkaSecuritySettings(BaseModel):
    """How every Kafka client of GSS authenticates and encrypts (docs/security.md, "Kafka").

    contract/kafka.py turns this into librdkafka options (ingester, publisher, changelog
    writer, watch, archiver, replay, subscriber) and Java client properties (the compute job's
    KafkaSource and KafkaSink), so one setting reaches every client.
    """

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    # A secret: give it as a file in the secrets directory (kafka__security__sasl_password).
    sasl_password: str | None = None
    # PEM: the CA that signed the brokers' certificates (None: the system's roots), and this
    # client's certificate and key when the brokers require mutual TLS.
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class KafkaSettings(BaseModel):
    """The Kafka cluster: changelog, availability events, dead letters."""

    # None: no broker; PutSignals applies directly to the store.
    bootstrap_servers: str | None = None
    changelog_topic: str = CHANGELOG_TOPIC
    available_topic: str = AVAILABLE_TOPIC
    # Dead letters of the ingester and the compute job alike (contract/deadletter.py).
    dlq_topic: str = DLQ_TOPIC
    # TLS and SASL of every Kafka client GSS creates.
    security: KafkaSecuritySettings = Field(default_factory=KafkaSecuritySettings)
    # Passed through as is, over `security` (rarer options: ssl.endpoint.*, sasl.oauthbearer.*,
    # ...), to librdkafka and to the compute job's Java clients (names both understand).
    client_config: dict[str, str] = Field(default_factory=dict)
    # Values at most this large ride inline in availability events (signals that allow it).
    inline_value_max_bytes: int = 4096
    # Create missing topics (with each galaxy's partition count) at start and after a broker
    # lost them. Turn off where topics are managed elsewhere (Strimzi KafkaTopic resources).
    create_topics: bool = True
    # Replication factor of created topics; -1 takes the broker's default.
    replication_factor: int = -1
    # Records the ingester takes from the changelog per WriteBatch, at most.
    ingest_batch_max_records: int = 5000
    # How often the ingester checks that its topics are the ones its offsets belong to.
    topic_check_interval_seconds: float = 5.0
    # A record the broker has not acknowledged after this long fails: the outbox publisher then
    # starts a fresh producer and sends again; PutSignals answers UNAVAILABLE.
    publish_timeout_seconds: float = 15.0
    put_timeout_seconds: float = 10.0
    # PutSignals(wait_readable) waits at most this long for the ingester.
    wait_readable_timeout_seconds: float = 10.0
    # Outbox entries handed to the producer and not yet acknowledged, at most.
    outbox_max_in_flight: int = 10_000
    # Availability events of backfilled values (`gss signal backfill`) published a second, at
    # most; live events are never held back by them (docs/history.md, "Backfill").
    backfill_events_per_second: float = Field(default=1000.0, gt=0)

    def topic(self, template: str, galaxy: str) -> str:
        """The topic ``template`` (one of the fields above) names for ``galaxy``."""
        return galaxy_topic(template, galaxy)


class TritonSettings(BaseModel):
    """Where models are served, and how the model client calls them (docs/models.md)."""

    # host:port of Triton's HTTP endpoint (KServe v2 protocol, port 8000; "https://host:port"
    # for TLS); None starts a local server in `gss run`.
    url: str | None = None
    # Where the models are (a Triton model repository); None: the example repository shipped
    # with GSS's compute package (compute.triton.model_repository resolves it).
    model_repository: Path | None = None
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
    # Attempts per call on transient errors (Triton unreachable, 503, ...), exponential backoff.
    max_attempts: int = Field(default=4, ge=1)
    retry_backoff_seconds: float = Field(default=0.1, ge=0)
    retry_backoff_max_seconds: float = Field(default=2.0, ge=0)


class ComputeSettings(BaseModel):
    """The Flink job that runs the plugins (docs/compute.md)."""

    # "local" runs a MiniCluster in-process; "remote" submits to jobmanager_address;
    # "application": the Flink client running the job (flink run, the Kubernetes operator's
    # PythonDriver) provides the cluster.
    mode: Literal["local", "remote", "application"] = "local"
    # host:port of the JobManager's REST endpoint (remote mode).
    jobmanager_address: str | None = None
    checkpoint_interval_seconds: float = 5.0
    # Unaligned checkpoints (exactly-once state, in-flight records stored with the
    # checkpoint): with aligned ones, the sink held map values back at each checkpoint until
    # the barrier came through a lagging join or window (docs/compute.md, "Performance").
    unaligned_checkpoints: bool = True
    state_backend: Literal["hashmap", "rocksdb"] = "hashmap"
    # Where checkpoints go (file://, s3://, ...); None: ./gss-data/flink-checkpoints locally.
    checkpoint_dir: str | None = None
    parallelism: int = 1
    # Names the Flink job; also its Kafka consumer group, the envelopes' producer
    # ("flink:<job_name>") and the prefix of its Kafka transactional ids.
    job_name: str = "gss-compute"
    # Modules, packages or .py paths whose plugins the job runs.
    plugins: list[str] = Field(default_factory=lambda: ["compute.examples"])
    # The code revision every value's envelope names (plugin_revision), e.g. a build id or git
    # commit; unset: a hash of each plugin's source file, taken when the job is submitted.
    plugin_revision: str | None = None
    # at-least-once: values are visible at once, a restart may write some again (GSS applies
    # them idempotently). exactly-once: Kafka transactions, values visible to read_committed
    # consumers only after each checkpoint.
    delivery_guarantee: Literal["at-least-once", "exactly-once"] = "at-least-once"
    # Where a consumer group without committed offsets starts reading its topics.
    start_from: Literal["earliest", "latest"] = "earliest"
    # The Python steps that read a topic (map plugins, group-by extraction, join inputs) get
    # its records in batches of up to batch_max_records, each batch leaving at most
    # batch_max_delay_seconds after its first record arrived: a record crosses into the Python
    # worker at a fraction of its per-element cost, for at most that much latency
    # (docs/compute.md, "Performance"). 1 hands records over one by one.
    batch_max_records: int = Field(default=256, ge=1)
    batch_max_delay_seconds: float = Field(default=0.02, ge=0)
    # Windows and joins (the keyed, stateful steps) run in a slot-sharing group of this name,
    # apart from the steps chained to the sources (map plugins, group-by extraction, join
    # inputs): each group takes a task slot and a Python worker of its own, so map values never
    # wait behind join and window work (docs/compute.md, "Performance"). A job with both needs
    # 2 x parallelism task slots (local mode gives its MiniCluster that many). None: one group.
    stateful_slot_sharing_group: str | None = "stateful"
    # Records in flight per model-plugin operator (their model calls batch together).
    model_concurrency: int = Field(default=64, ge=1)
    model_timeout_seconds: float = Field(default=60.0, gt=0)
    # A source subtask without events for this long stops holding back the watermark.
    idle_source_seconds: float = Field(default=10.0, gt=0)
    # Restarts from the latest checkpoint after a failure, this many times, this far apart.
    restart_attempts: int = Field(default=10, ge=0)
    restart_delay_seconds: float = Field(default=2.0, ge=0)
    # Local mode: "process" runs plugins in Python worker processes as a cluster does (a
    # crashing plugin cannot take the caller down); "loopback" runs them in the calling
    # process (starts faster, shares its GIL).
    python_workers: Literal["process", "loopback"] = "process"
    # The Python the TaskManagers run plugins with (local and remote modes); None: the
    # interpreter that submits the job (right for a local cluster and for images built like
    # deploy/flink's). Application mode takes the deployment's python.executable.
    python_executable: str | None = None
    # Flink's Prometheus reporter port in local mode (0: no reporter).
    metrics_port: int = 9249
    # The Flink Kafka connector jars (`python -m compute.flink.jars`); None: ~/.cache/gss/flink-jars.
    jars_dir: Path | None = None
    # Extra Flink configuration, passed as is (e.g. {"taskmanager.memory.process.size": "2g"}).
    flink_config: dict[str, str] = Field(default_factory=dict)
    # History (docs/history.md, "Unified source"): with either set, each content topic is read
    # from the archive (archive.root) first, then from Kafka at the next offset. history_from:
    # records with a Kafka timestamp from then on; history_positions: {topic: {partition:
    # offset}}, records from those offsets on (partitions not named: from the beginning).
    history_from: datetime | None = None
    history_positions: dict[str, dict[int, int]] = Field(default_factory=dict)
    # Records a second read from the archive, per topic (None: as fast as the job takes them).
    history_rate_per_second: float | None = Field(default=None, gt=0)
    # Two or more topics with history: Flink's watermark alignment keeps their sources' event
    # times within this much of each other (a topic's history waits for the others).
    history_max_drift_seconds: float = Field(default=60.0, gt=0)
    # Backfill (docs/history.md, "Backfill"; `gss signal backfill`): records with a Kafka
    # timestamp from history_until on are dropped; history_bounded stops the job at the switch
    # point (the archive's end: no Kafka leg); backfill marks every value the job writes.
    history_until: datetime | None = None
    history_bounded: bool = False
    backfill: bool = False

    @property
    def reads_history(self) -> bool:
        return self.history_from is not None or bool(self.history_positions)


class ExportSettings(BaseModel):
    """The daily snapshot export (docs/export.md)."""

    root: Path = Path("./gss-data/snapshots")
    # Processes converting values; 1 converts in the exporting process itself.
    workers: int = 2
    # Checkpoints and secondary-instance files while exporting; None: <store.path>.export.
    # Must be on the store's file system (a checkpoint hard-links the SST files).
    work_dir: Path | None = None
    # snappy: the codec every Hive, Spark, Trino and DuckDB reads; zstd: ~30% smaller, slower.
    compression: Literal["snappy", "zstd", "gzip", "none"] = "snappy"
    row_group_rows: int = 65536
    # dt=D may be exported until D + late_days (UTC); later runs are refused, because the
    # store holds the current state, not D's (--allow-late overrides).
    late_days: int = 2
    # What the DDL in each manifest names: database (schema), Trino catalog, and the URI of
    # the root as the engines see it (e.g. s3://bucket/gss-snapshots; None: file://<root>).
    ddl_database: str = "gss"
    trino_catalog: str = "hive"
    location_uri: str | None = None


class ArchiveSettings(BaseModel):
    """The topic archive: Kafka topics copied into immutable files (docs/history.md)."""

    # A local directory, or an object-store URI: s3://bucket/prefix (the s3_* options below).
    root: str = "./gss-data/archive"
    # Topics to archive; None: every galaxy's changelog plus content_topics.
    topics: list[str] | None = None
    # The content topics the compute plugins read (the server cannot see the plugins).
    content_topics: list[str] = Field(default_factory=lambda: ["content.images", "content.pins"])
    # A partition's buffered records become one batch (files + a commit marker) when any of
    # these is reached: records, uncompressed bytes, seconds since its first buffered record.
    max_file_records: int = Field(default=50_000, ge=1)
    max_file_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    max_file_seconds: float = Field(default=60.0, gt=0)
    # Offsets are also committed to this consumer group, for lag monitoring only: the archive's
    # commit markers, not the group, say where the archiver resumes.
    group_id: str = "gss-archive"
    commit_to_kafka: bool = True
    # gzip level of the .jsonl.gz files (1 fastest .. 9 smallest).
    compression_level: int = Field(default=6, ge=1, le=9)
    # How often topics and partitions are listed again (new partitions, recreated topics).
    topic_check_interval_seconds: float = Field(default=30.0, gt=0)
    # Retries of an unreachable broker or object store back off up to this long.
    retry_backoff_max_seconds: float = Field(default=10.0, gt=0)
    # S3 (and S3-compatible stores): endpoint host:port or http(s)://host:port (None: AWS),
    # region, and credentials (None: the AWS default chain: env, ~/.aws, instance role).
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    # Prometheus metrics of `gss archive run` over HTTP; 0 picks a free port, -1 turns it off.
    metrics_port: int = 9466
    metrics_host: str = "127.0.0.1"


class ClientSettings(BaseModel):
    """How the CLI (and clients built with ``GssClient.from_settings``) reach a GSS server."""

    # host:port; None: server.host:server.port.
    target: str | None = None
    # TLS towards the server (ca_file to trust; cert_file/key_file for mutual TLS).
    tls: TlsSettings = Field(default_factory=TlsSettings)
    # A bearer token (JWT or static), or a file holding one (read on every new client).
    token: str | None = None
    token_file: Path | None = None


class UiSettings(BaseModel):
    """The signal explorer page (`gss ui`, docs/debugging.md): where it listens, and what it
    shows. It reaches GSS through ``client.*``."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # The GSS server's Prometheus endpoint, for ingest lag; None: the target's host and
    # server.metrics_port.
    metrics_url: str | None = None
    recent_events: int = Field(default=50, ge=1, le=10_000)
    dead_letter_seconds: float = Field(default=3600.0, gt=0)


class ClusterSettings(BaseModel):
    """Scale-out serving (docs/cluster.md). The defaults are one node hosting every partition.

    A cluster has ``nodes`` nodes (ordinals 0..nodes-1, a StatefulSet's pods) and ``replicas``
    replicas of each changelog partition: partition p of every galaxy is hosted by nodes
    ``p % nodes`` and the ``replicas - 1`` ordinals after it, wrapping
    (:func:`contract.partitions.replica_nodes`). A node ingests only the partitions it hosts
    and refuses lookups of entities on the others. Nodes announce themselves (address, hosted
    partitions, applied positions, lag) on a Kafka topic, from which every node answers
    DescribeCluster.
    """

    nodes: int = Field(default=1, ge=1)
    replicas: int = Field(default=1, ge=1)
    # This node's ordinal; None: the number after the last "-" of the host name (a
    # StatefulSet pod, gss-3 -> 3), or 0 when the cluster has one node.
    ordinal: int | None = Field(default=None, ge=0)
    # host:port clients reach this node at (a pod's DNS name); None: server.host and the port
    # the server bound.
    advertised_address: str | None = None
    # Where nodes announce themselves (a compacted topic keyed by node address).
    announce_topic: str = "gss.cluster.nodes"
    announce_interval_seconds: float = Field(default=1.0, gt=0)
    # A node not heard from for this long is shown as down in the cluster map.
    node_timeout_seconds: float = Field(default=5.0, gt=0)
    # gRPC health is NOT_SERVING until every hosted partition has been read to its end once
    # and is at most this many records behind.
    max_ready_lag_records: int = Field(default=1000, ge=0)
    # A GetSignals call naming minimum positions this node has not applied waits this long at
    # most (within its deadline), then answers UNAVAILABLE so the client tries another replica.
    min_position_wait_seconds: float = Field(default=0.5, ge=0)
    # With more than one replica, the replicas of a partition elect its outbox publisher
    # through these Kafka consumer groups (one per replica set: <group>-<p % nodes>).
    publisher_group: str = "gss-outbox-publisher"
    # Store backups (RocksDB checkpoints; docs/cluster.md, "Backups"): a directory or
    # s3://bucket/prefix (endpoint and credentials: archive.s3_*). None: no backups.
    backup_root: str | None = None
    # A running node backs its store up this often (None: only `gss store backup`).
    backup_interval_seconds: float | None = Field(default=None, gt=0)
    # A node starting with no store restores the latest backup first, then catches up from
    # the changelog at the backup's offsets (instead of replaying all history).
    seed_from_backup: bool = True

    @property
    def clustered(self) -> bool:
        """True when this node is one of several (or hosts less than every partition)."""
        return self.nodes > 1


class Settings(BaseSettings):
    """Everything GSS reads at start-up. See the module docstring for precedence."""

    model_config = SettingsConfigDict(
        env_prefix="GSS_",
        env_nested_delimiter="__",
        # Kubernetes Secret keys become files: kafka__client_config holds that field's JSON.
        secrets_nested_delimiter="__",
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
    archive: ArchiveSettings = Field(default_factory=ArchiveSettings)
    client: ClientSettings = Field(default_factory=ClientSettings)
    ui: UiSettings = Field(default_factory=UiSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            env_settings,
            # Secret keys are field paths without the prefix: kafka__client_config.
            NestedSecretsSettingsSource(file_secret_settings, secrets_prefix=""),
        ]
        if settings_cls.model_config.get("yaml_file"):
            sources.append(YamlConfigSettingsSource(settings_cls))
        return tuple(sources)


def default_settings() -> Settings:
    """The built-in defaults alone: no environment variable, config file or secret is read."""
    return Settings.model_construct()


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, an optional YAML file and explicit overrides.

    ``overrides`` take nested dicts (``server={"port": 0}``) and win over every other source.
    """
    secrets_dir = os.environ.get("GSS_SECRETS_DIR", "/run/secrets/gss")
    overrides["_secrets_dir"] = secrets_dir if Path(secrets_dir).is_dir() else None
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
