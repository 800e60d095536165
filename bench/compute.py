"""Compute benchmark: records/s through the Flink job, and freshness into GSS.

One local broker, one GSS server (its ingester materialising the changelogs) and one Flink
MiniCluster job (Python workers in their own processes, parallelism 1) running a trivial
plugin beside the example plugins (dominant_colors, dhash, the near_duplicate_of join,
save_count_1h; the model plugins are measured by bench/triton.py):

GSS runs as its own ``gss serve`` process, as it would in production.

1. Trivial: ``GSS_BENCH_COMPUTE_TRIVIAL`` (default 20,000) pin events to a topic read by
   ``bench/trivial@1`` (event -> DHash(user_id)). Records/s from the first value on the
   changelog to the last.
2. Examples: ``GSS_BENCH_COMPUTE_IMAGES`` (default 3,000) image events and as many pin
   events. Content events/s from the first to the last image's near_duplicate_of value
   (each image passes dominant_colors, dhash, then the join through the changelog).
3. Baseline, same run: the same plugin functions in a plain loop in this process
   (decode, call, encode the record, no Kafka or Flink): the ceiling of one Python core.
4. Freshness: images produced at ``GSS_BENCH_COMPUTE_RATE`` (default 40) a second for
   ``GSS_BENCH_COMPUTE_SECONDS`` (default 20); a poller looks each one up in GSS
   (GetSignals, every 10 ms) until its dhash@1 is readable. Freshness = readable - produced,
   same clock; the first 3 s are warm-up, and the run starts once GSS has caught up with the
   throughput phases' backlog. The join (near_duplicate_of@1, a second trip
   through the changelog) is reported beside it.

Returns the ``compute`` section of bench/report.json.

``GSS_BENCH_COMPUTE_FLINK_CONFIG`` (JSON) adds Flink options to every job, to compare settings
(``{"python.execution-mode": "thread"}``, bundle sizes).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cloudpickle
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition

from clients.lookup import GssClient
from compute import Source, signal
from compute.binding import Bound, bind
from compute.content import pin_event
from compute.examples.images.dhash import dhash
from compute.examples.images.dominant_colors import dominant_colors
from compute.examples.images.near_duplicate_of import near_duplicate_of
from compute.examples.pins.save_count_1h import save_count_1h
from compute.execution import run_map
from compute.flink import gateway
from compute.flink.run import ComputeJob, ensure_topics
from contract import logs
from contract.kafka import producer_config
from contract.registry import DEFAULT_REGISTRY_PATH, load_registry
from contract.settings import Settings, load_settings
from contract.v1 import envelope_pb2
from contract.v1.content_pb2 import PinEngagementEvent
from contract.v1.signals_pb2 import DHash
from gss.local.broker import LocalBroker
from gss.local.generator import ContentGenerator

TRIVIAL_TOPIC = "bench.trivial"
WARM_UP_SECONDS = 3.0


@signal(
    galaxy="bench",
    name="trivial",
    version=1,
    source=Source(topic=TRIVIAL_TOPIC, schema=PinEngagementEvent, entity="pin_id"),
)
def trivial(event: PinEngagementEvent) -> DHash:
    return DHash(hash=event.user_id)


EXAMPLES = [dominant_colors, dhash, near_duplicate_of, save_count_1h]


def _registry(directory: Path) -> Path:
    data = yaml.safe_load(DEFAULT_REGISTRY_PATH.read_text())
    data["galaxies"]["bench"] = {
        "key": {"type": "int64"},
        "partitions": 4,
        "signals": [{"name": "trivial", "version": 1, "value_type": "gss.v1.DHash"}],
    }
    path = directory / "registry.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class ChangelogCounter:
    """Counts changelog records per signal as they arrive, with first and last arrival times."""

    def __init__(self, bootstrap_servers: str, topics: dict[str, int]) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap_servers,
                "group.id": "bench-compute",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        self._consumer.assign(
            [TopicPartition(t, p, 0) for t, n in topics.items() for p in range(n)]
        )
        self.counts: dict[str, int] = {}
        self.entities: dict[str, set[str]] = {}
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._consumer.consume(1000, 0.05):
                if message.error():
                    continue
                now = time.monotonic()
                record = envelope_pb2.SignalRecord.FromString(message.value())
                name = record.signal.name
                self.counts[name] = self.counts.get(name, 0) + 1
                self.entities.setdefault(name, set()).add(record.entity_id)
                self.first.setdefault(name, now)
                self.last[name] = now

    def wait(self, name: str, count: int, timeout: float, *, distinct: bool = False) -> None:
        """Until ``count`` ``name`` values arrived (``distinct``: for that many entities;
        a join may write one entity's value more than once)."""
        deadline = time.monotonic() + timeout

        def got() -> int:
            return len(self.entities.get(name, ())) if distinct else self.counts.get(name, 0)

        while got() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{got()} of {count} {name} values within {timeout:.0f} s")
            time.sleep(0.05)

    def rate(self, name: str, count: int) -> float:
        return count / max(self.last[name] - self.first[name], 1e-6)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()


def _produce(producer: Producer, items: list[tuple[str, bytes, bytes]]) -> None:
    for topic, key, value in items:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)


def _serve(settings: Settings, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """GSS in its own process (``gss serve``), as in production, answering on a free port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "GSS_REGISTRY_PATH": str(settings.registry_path),
        "GSS_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers or "",
        "GSS_SERVER__METRICS_PORT": "0",
        "GSS_STORE__SYNC_WRITES": "false",
        "GSS_LOG_LEVEL": "WARNING",
        "GSS_LOG_FORMAT": "json",
    }
    log = (work / "gss.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "gss", "serve", "--port", str(port), "--data", str(work / "store")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with GssClient(address) as client:
                client.galaxies()
            return process, address
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"gss serve did not start: see {work / 'gss.log'}") from None
            time.sleep(0.2)


def baseline_rate(bounds: list[Bound], payloads: list[bytes], seconds: float = 3.0) -> float:
    """Records/s of the plugins' own work in a plain loop (decode, call, encode)."""
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for payload in payloads:
            for bound in bounds:
                run_map(bound, payload)
            done += 1
    return done / (time.perf_counter() - start)


def _wait_readable(
    gss: GssClient, galaxy: str, entity_id: str, signal: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not gss.get(galaxy, [entity_id], [signal])[0].signals[signal].found:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{galaxy}/{entity_id} {signal} not readable in GSS in {timeout:.0f} s"
            )
        time.sleep(0.1)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def freshness(
    settings: Settings,
    gss: GssClient,
    rate: float,
    seconds: float,
    signals: tuple[str, ...] = ("dhash@1", "near_duplicate_of@1"),
) -> dict[str, list[float]]:
    """Produce images at ``rate``; poll GSS until each signal of each image is readable."""
    producer = Producer(producer_config(settings.kafka, "gss-bench", delivery_timeout_seconds=30.0))
    generator = ContentGenerator(seed=99)
    pending: dict[str, tuple[float, set[str]]] = {}
    lock = threading.Lock()
    found: dict[str, list[float]] = {s: [] for s in signals}
    stop = threading.Event()

    errors: list[BaseException] = []

    def poll() -> None:
        try:
            _poll()
        except BaseException as exc:  # surfaced after the run
            errors.append(exc)

    def _poll() -> None:
        while not stop.is_set() or pending:
            with lock:
                ids = list(pending)
            if ids:
                rows = gss.get("images", ids, list(signals))
                now = time.monotonic()
                with lock:
                    for row in rows:
                        produced, missing = pending[row.entity_id]
                        for name in list(missing):
                            if row.signals[name].found:
                                missing.discard(name)
                                if produced >= warm_until:
                                    found[name].append((now - produced) * 1000)
                        if not missing:
                            del pending[row.entity_id]
            if stop.is_set() and time.monotonic() > give_up:
                return
            time.sleep(0.01)

    start = time.monotonic()
    warm_until = start + WARM_UP_SECONDS
    give_up = start + seconds + 30
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    sent = 0
    while time.monotonic() - start < seconds:
        due = int((time.monotonic() - start) * rate) + 1
        while sent < due:
            _, key, event = generator.next_image(datetime.now(UTC))
            with lock:
                pending[key.hex()] = (time.monotonic(), set(signals))
            producer.produce("content.images", key=key, value=event.SerializeToString())
            producer.poll(0)
            sent += 1
        time.sleep(0.002)
    producer.flush(10)
    stop.set()
    poller.join(timeout=40)
    if errors:
        raise RuntimeError(f"freshness poller failed: {errors[0]!r}") from errors[0]
    return found


def run(report_dir: Path) -> dict[str, Any]:
    logs.configure("WARNING", "json")
    trivial_count = int(os.environ.get("GSS_BENCH_COMPUTE_TRIVIAL", "20000"))
    image_count = int(os.environ.get("GSS_BENCH_COMPUTE_IMAGES", "3000"))
    rate = float(os.environ.get("GSS_BENCH_COMPUTE_RATE", "40"))
    seconds = float(os.environ.get("GSS_BENCH_COMPUTE_SECONDS", "20"))
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with tempfile.TemporaryDirectory(prefix="gss-bench-compute-") as tmp, LocalBroker() as broker:
        work = Path(tmp)
        settings = load_settings(
            registry_path=str(_registry(work)),
            store={"path": str(work / "store"), "sync_writes": False},
            server={"host": "127.0.0.1", "port": 0, "metrics_port": 0},
            kafka={"bootstrap_servers": broker.bootstrap_servers},
            compute={
                "job_name": "gss-bench-compute",
                "metrics_port": 0,
                "checkpoint_dir": (work / "checkpoints").as_uri(),
                # Flink options to compare (python.execution-mode: thread, bundle sizes, ...).
                "flink_config": json.loads(os.environ.get("GSS_BENCH_COMPUTE_FLINK_CONFIG", "{}")),
            },
        )
        registry = load_registry(settings.registry_path)
        plugins = [trivial, *EXAMPLES]
        generator = ContentGenerator(seed=7)
        pins = [pin_event(i % 500, 3, i, datetime.now(UTC)) for i in range(trivial_count)]
        trivial_items = [
            (TRIVIAL_TOPIC, p.pin_id.to_bytes(8, "big"), p.SerializeToString()) for p in pins
        ]
        example_items: list[tuple[str, bytes, bytes]] = []
        for _ in range(image_count):
            _, key, image = generator.next_image(datetime.now(UTC))
            example_items.append(("content.images", key, image.SerializeToString()))
            topic, key, pin = generator.next_pin(datetime.now(UTC))
            example_items.append((topic, key, pin.SerializeToString()))

        bounds = bind(plugins, registry, settings)
        by_ref: Callable[[str], Bound] = lambda ref: next(b for b in bounds if b.ref == ref)  # noqa: E731
        base_trivial = baseline_rate(
            [by_ref("bench/trivial@1")], [v for _, _, v in trivial_items[:2000]]
        )
        image_payloads = [v for t, _, v in example_items[:400] if t == "content.images"]
        base_images = baseline_rate(
            [by_ref("images/dominant_colors@1"), by_ref("images/dhash@1")], image_payloads
        )

        job = ComputeJob(settings, plugins, registry=registry)
        counter: ChangelogCounter | None = None
        ensure_topics(settings, bind(plugins, registry, settings), registry)
        server, address = _serve(settings, work)
        gss = GssClient(address)
        try:
            job.start()
            kafka = settings.kafka
            counter = ChangelogCounter(
                broker.bootstrap_servers,
                {kafka.topic(kafka.changelog_topic, g.name): g.partitions for g in registry},
            )
            producer = Producer(
                producer_config(settings.kafka, "gss-bench", delivery_timeout_seconds=30.0)
            )
            _produce(producer, trivial_items)
            counter.wait("trivial", trivial_count, timeout=600)
            trivial_rate = counter.rate("trivial", trivial_count)
            _produce(producer, example_items)
            counter.wait("near_duplicate_of", image_count, timeout=600, distinct=True)
            first = min(counter.first["dhash"], counter.first["dominant_colors"])
            examples_rate = len(example_items) / max(
                counter.last["near_duplicate_of"] - first, 1e-6
            )
            # GSS catches up with the backlog (and late-peer re-evaluations drain) first.
            last_image = next(k for t, k, _ in reversed(example_items) if t == "content.images")
            _wait_readable(gss, "images", last_image.hex(), "near_duplicate_of@1", timeout=600)
            _wait_readable(gss, "bench", str(pins[-1].pin_id), "trivial@1", timeout=600)
            time.sleep(2.0)
            fresh = freshness(settings, gss, rate, seconds)
        finally:
            if counter is not None:
                counter.close()
            job.stop()
            gss.close()
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
            gateway.shutdown()
        map_ms, join_ms = fresh["dhash@1"], fresh["near_duplicate_of@1"]
        if not map_ms or not join_ms:
            raise RuntimeError(
                "no value became readable in GSS during the freshness run; its log:\n"
                + (work / "gss.log").read_text()[-4000:]
            )
    return {
        "records_per_s_trivial": round(trivial_rate, 1),
        "records_per_s_examples": round(examples_rate, 1),
        "freshness_p50_ms": round(_percentile(map_ms, 0.5), 1),
        "freshness_p99_ms": round(_percentile(map_ms, 0.99), 1),
        "freshness_join_p50_ms": round(_percentile(join_ms, 0.5), 1),
        "freshness_join_p99_ms": round(_percentile(join_ms, 0.99), 1),
        "freshness_samples": len(map_ms),
        "baseline_python_loop_records_per_s_trivial": round(base_trivial, 1),
        "baseline_python_loop_images_per_s_map_examples": round(base_images, 1),
        "ratio_trivial_to_baseline": round(trivial_rate / base_trivial, 4),
        "ratio_examples_to_baseline": round(examples_rate / base_images, 4),
        "setup": {
            "trivial_records": trivial_count,
            "images": image_count,
            "pin_events": image_count,
            "freshness_rate_per_s": rate,
            "freshness_seconds": seconds,
            "parallelism": 1,
            "python_workers": settings.compute.python_workers,
        },
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(Path(__file__).resolve().parent), indent=2))
