"""Compute benchmark: records/s and CPU per record through the Flink job, and freshness into GSS.

Flink MiniCluster jobs (Python workers in their own processes, parallelism 1) against a
local broker; each throughput phase runs its own job on its own broker:

1. Trivial: ``GSS_BENCH_COMPUTE_TRIVIAL`` (default 20,000) pin events through
   ``bench/trivial@1`` (event -> DHash(user_id)) alone. Records/s from the first value on the
   changelog to the last.
2. Map examples: ``GSS_BENCH_COMPUTE_IMAGES`` (default 3,000) image events through the map
   examples (dominant_colors, dhash) alone: images/s.
3. Baseline, same run: the same plugin functions in a plain loop in this process (decode,
   call, encode the record; no Kafka or Flink): the ceiling of one Python core. Ratios are
   to it. Each phase also reports the CPU the job's processes (JVM and Python worker) spent
   per record: the cost a deployment pays, and a figure that load on the machine does not
   distort the way it distorts rates.
4. A lever, same data: phase 1 again with ``python.execution-mode: thread`` (the map
   examples, numpy-based, wrote nothing in thread mode here).
5. Whole pipeline: one job with every example (the maps, the near_duplicate_of Match join
   over the changelog, the windowed save_count_1h and save_count_last_hour) and ``gss serve``
   materialising the changelogs, as in production: as many images and pin events; events/s
   from the first value to the last image's near_duplicate_of value.
6. Freshness, on the same job: ``GSS_BENCH_COMPUTE_RATE`` (default 40) events a second,
   images and pin saves in turn, for ``GSS_BENCH_COMPUTE_SECONDS`` (default 20) after a 3 s
   warm-up that is not measured, then at 10x the rate for a third of the time (a burst); a poller
   looks each one up in GSS (GetSignals, every 10 ms) until the image's dhash@1 (a map) and
   near_duplicate_of@1 (a join: a second trip through the changelog), and the save's count in
   save_count_last_hour@1 (a sliding window fired early), are readable. Freshness = readable
   - produced, same clock.

Returns the ``compute`` section of bench/report.json. ``GSS_BENCH_COMPUTE_FLINK_CONFIG``
(JSON) adds Flink options to every job, to compare settings (bundle sizes, ...).
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
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
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
from compute.examples.pins.save_count_last_hour import save_count_last_hour
from compute.execution import run_map
from compute.flink import gateway
from compute.flink.run import ComputeJob, ensure_topics
from contract import logs, processes
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
BURST = 10  # the burst's rate, times the steady one
# The freshness run's pins (their saves' counts are followed), apart from the generator's.
FRESH_PINS_FIRST = 10_000_000
FRESH_PINS = 200


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


@dataclass
class _Expected:
    """What the freshness poller waits for: a value of ``signal`` for one entity."""

    galaxy: str
    entity_id: str
    signal: str
    produced: float
    measured: bool
    count_at_least: int | None = None  # windowed counts: the count this event makes


def freshness(
    settings: Settings,
    gss: GssClient,
    phases: list[tuple[float, float]],
    warm_up_seconds: float = WARM_UP_SECONDS,
) -> dict[str, list[float]]:
    """For each (rate, seconds) phase in turn, produce ``rate`` events a second, images and
    pin saves in turn; poll GSS until each image's dhash@1 and near_duplicate_of@1, and each
    save's count in pins/save_count_last_hour@1, are readable. Milliseconds from produce to
    readable, by signal.
    """
    producer = Producer(producer_config(settings.kafka, "gss-bench", delivery_timeout_seconds=30.0))
    generator = ContentGenerator(seed=99)
    pending: list[_Expected] = []
    lock = threading.Lock()
    found: dict[str, list[float]] = defaultdict(list)
    stop = threading.Event()
    errors: list[BaseException] = []

    def poll() -> None:
        try:
            while not stop.is_set() or (pending and time.monotonic() < give_up):
                with lock:
                    waiting = list(pending)
                by_query: dict[tuple[str, str], list[_Expected]] = defaultdict(list)
                for item in waiting:
                    by_query[(item.galaxy, item.signal)].append(item)
                done: set[int] = set()
                for (galaxy, name), items in by_query.items():
                    ids = list(dict.fromkeys(item.entity_id for item in items))
                    rows = {r.entity_id: r for r in gss.get(galaxy, ids, [name])}
                    now = time.monotonic()
                    for item in items:
                        cell = rows[item.entity_id].signals[name]
                        if not cell.found or (
                            item.count_at_least is not None
                            and getattr(cell.value, "count", 0) < item.count_at_least
                        ):
                            continue
                        done.add(id(item))
                        if item.measured:
                            found[name].append((now - item.produced) * 1000)
                with lock:
                    pending[:] = [item for item in pending if id(item) not in done]
                time.sleep(0.01)
        except BaseException as exc:  # surfaced after the run
            errors.append(exc)

    give_up = float("inf")
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    saves: dict[int, int] = defaultdict(int)
    sent = 0
    for rate, seconds in phases:
        start = time.monotonic()
        warm_until = start + warm_up_seconds
        due_total = 0
        while time.monotonic() - start < seconds:
            due = int((time.monotonic() - start) * rate) + 1
            while due_total < due:
                now = datetime.now(UTC)
                produced = time.monotonic()
                measured = produced >= warm_until
                if sent % 2 == 0:  # images and pin saves in turn
                    _, key, image = generator.next_image(now)
                    with lock:
                        for name in ("dhash@1", "near_duplicate_of@1"):
                            pending.append(_Expected("images", key.hex(), name, produced, measured))
                    producer.produce("content.images", key=key, value=image.SerializeToString())
                else:
                    pin_id = FRESH_PINS_FIRST + (sent // 2) % FRESH_PINS
                    saves[pin_id] += 1
                    save = pin_event(pin_id, PinEngagementEvent.SAVE, sent, now)
                    with lock:
                        pending.append(
                            _Expected(
                                "pins",
                                str(pin_id),
                                "save_count_last_hour@1",
                                produced,
                                measured,
                                saves[pin_id],
                            )
                        )
                    producer.produce(
                        "content.pins",
                        key=pin_id.to_bytes(8, "big"),
                        value=save.SerializeToString(),
                    )
                producer.poll(0)
                due_total += 1
                sent += 1
            time.sleep(0.002)
        producer.flush(10)
    give_up = time.monotonic() + 60
    stop.set()
    poller.join(timeout=70)
    if errors:
        raise RuntimeError(f"freshness poller failed: {errors[0]!r}") from errors[0]
    return found


def _job_cpu_seconds() -> float:
    """CPU seconds used so far by this process's Flink processes (the MiniCluster's JVM and its
    Python workers): the job's cost, which load from other processes does not inflate."""
    flink = [
        pid
        for pid, command in processes.descendants(os.getpid()).items()
        if "java" in command or "pyflink" in command
    ]
    return processes.cpu_seconds(flink)


def throughput(
    settings: Settings,
    registry: Any,
    plugins: list[Any],
    items: list[tuple[str, bytes, bytes]],
    expect: dict[str, int],
) -> tuple[float, float]:
    """A job of ``plugins`` alone over ``items`` on a broker of its own: (records/s, the job's
    CPU ms per record), after a warm-up of the first tenth. ``expect``: values per signal name
    (one per item)."""
    with LocalBroker() as broker:
        settings = settings.model_copy(
            update={
                "kafka": settings.kafka.model_copy(
                    update={"bootstrap_servers": broker.bootstrap_servers}
                )
            }
        )
        ensure_topics(settings, bind(plugins, registry, settings), registry)
        kafka = settings.kafka
        counter = ChangelogCounter(
            broker.bootstrap_servers,
            {kafka.topic(kafka.changelog_topic, g.name): g.partitions for g in registry},
        )
        job = ComputeJob(settings, plugins, registry=registry)
        # Warm-up first (workers started, modules imported, JIT warm): measured after it.
        warm = max(1, len(items) // 10)
        try:
            job.start()
            producer = Producer(producer_config(kafka, "gss-bench", delivery_timeout_seconds=30.0))
            _produce(producer, items[:warm])
            for name in expect:
                counter.wait(name, warm, timeout=600)
            cpu_before = _job_cpu_seconds()
            start = time.monotonic()
            _produce(producer, items[warm:])
            for name, count in expect.items():
                counter.wait(name, count, timeout=600)
            cpu = _job_cpu_seconds() - cpu_before
            last = max(counter.last[name] for name in expect)
        finally:
            counter.close()
            job.stop()
            gateway.shutdown()  # each job in a JVM of its own: nothing carried over
    measured = len(items) - warm
    return measured / max(last - start, 1e-6), cpu * 1000 / measured


def run(report_dir: Path) -> dict[str, Any]:
    logs.configure("WARNING", "json")
    trivial_count = int(os.environ.get("GSS_BENCH_COMPUTE_TRIVIAL", "20000"))
    image_count = int(os.environ.get("GSS_BENCH_COMPUTE_IMAGES", "3000"))
    rate = float(os.environ.get("GSS_BENCH_COMPUTE_RATE", "40"))
    seconds = float(os.environ.get("GSS_BENCH_COMPUTE_SECONDS", "20"))
    flink_config = json.loads(os.environ.get("GSS_BENCH_COMPUTE_FLINK_CONFIG", "{}"))
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gss-bench-compute-") as tmp:
        work = Path(tmp)
        settings = load_settings(
            registry_path=str(_registry(work)),
            store={"path": str(work / "store"), "sync_writes": False},
            server={"host": "127.0.0.1", "port": 0, "metrics_port": 0},
            compute={
                "job_name": "gss-bench-compute",
                "metrics_port": 0,
                "checkpoint_dir": (work / "checkpoints").as_uri(),
                "flink_config": flink_config,
            },
        )
        registry = load_registry(settings.registry_path)
        generator = ContentGenerator(seed=7)
        pins = [pin_event(i % 500, 3, i, datetime.now(UTC)) for i in range(trivial_count)]
        trivial_items = [
            (TRIVIAL_TOPIC, p.pin_id.to_bytes(8, "big"), p.SerializeToString()) for p in pins
        ]
        image_items: list[tuple[str, bytes, bytes]] = []
        pin_items: list[tuple[str, bytes, bytes]] = []
        for _ in range(image_count):
            _, key, image = generator.next_image(datetime.now(UTC))
            image_items.append(("content.images", key, image.SerializeToString()))
            topic, key, pin = generator.next_pin(datetime.now(UTC))
            pin_items.append((topic, key, pin.SerializeToString()))

        bounds = bind([trivial, *EXAMPLES], registry, settings)
        by_ref: Callable[[str], Bound] = lambda ref: next(b for b in bounds if b.ref == ref)  # noqa: E731
        base_trivial = baseline_rate(
            [by_ref("bench/trivial@1")], [v for _, _, v in trivial_items[:2000]]
        )
        base_images = baseline_rate(
            [by_ref("images/dominant_colors@1"), by_ref("images/dhash@1")],
            [v for _, _, v in image_items[:400]],
        )
        result.update(
            {
                "baseline_python_loop_records_per_s_trivial": round(base_trivial, 1),
                "baseline_python_loop_images_per_s_map_examples": round(base_images, 1),
                "baseline_python_loop_cpu_ms_per_record_trivial": round(1000 / base_trivial, 4),
                "baseline_python_loop_cpu_ms_per_image_map_examples": round(1000 / base_images, 4),
            }
        )

        trivial_rate, trivial_cpu = throughput(
            settings, registry, [trivial], trivial_items, {"trivial": trivial_count}
        )
        maps_rate, maps_cpu = throughput(
            settings,
            registry,
            [dominant_colors, dhash],
            image_items,
            {"dhash": image_count, "dominant_colors": image_count},
        )
        # A lever measured, not taken: PyFlink's thread mode (Python inside the JVM). Only the
        # trivial plugin: the numpy-based map examples wrote nothing in thread mode here.
        thread_settings = settings.model_copy(
            update={
                "compute": settings.compute.model_copy(
                    update={"flink_config": {**flink_config, "python.execution-mode": "thread"}}
                )
            }
        )
        thread_rate, thread_cpu = throughput(
            thread_settings, registry, [trivial], trivial_items, {"trivial": trivial_count}
        )
        result.update(
            {
                "records_per_s_trivial": round(trivial_rate, 1),
                "cpu_ms_per_record_trivial": round(trivial_cpu, 4),
                "ratio_trivial_to_baseline": round(trivial_rate / base_trivial, 4),
                "images_per_s_map_examples": round(maps_rate, 1),
                "cpu_ms_per_image_map_examples": round(maps_cpu, 4),
                "ratio_map_examples_to_baseline": round(maps_rate / base_images, 4),
                "records_per_s_trivial_thread_mode": round(thread_rate, 1),
                "cpu_ms_per_record_trivial_thread_mode": round(thread_cpu, 4),
                "ratio_trivial_thread_mode_to_baseline": round(thread_rate / base_trivial, 4),
            }
        )
        print(f"bench compute: {json.dumps(result)}", file=sys.stderr, flush=True)

        result.update(
            _whole_pipeline(settings, registry, work, image_items, pin_items, rate, seconds)
        )
        result["setup"] = {
            "trivial_records": trivial_count,
            "images": image_count,
            "pin_events": image_count,
            "freshness_rate_per_s": rate,
            "freshness_seconds": seconds,
            "burst_rate_per_s": rate * BURST,
            "burst_seconds": round(seconds / 3, 1),
            "parallelism": 1,
            "python_workers": settings.compute.python_workers,
            "batch_max_records": settings.compute.batch_max_records,
            "batch_max_delay_seconds": settings.compute.batch_max_delay_seconds,
            "flink_config": flink_config,
        }
    return result


def _whole_pipeline(
    settings: Settings,
    registry: Any,
    work: Path,
    image_items: list[tuple[str, bytes, bytes]],
    pin_items: list[tuple[str, bytes, bytes]],
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    """Every example in one job with GSS serving: events/s, then freshness (steady, burst)."""
    plugins = [*EXAMPLES, save_count_last_hour]
    examples = [item for pair in zip(image_items, pin_items, strict=True) for item in pair]
    with LocalBroker() as broker:
        settings = settings.model_copy(
            update={
                "kafka": settings.kafka.model_copy(
                    update={"bootstrap_servers": broker.bootstrap_servers}
                )
            }
        )
        job = ComputeJob(settings, plugins, registry=registry)
        ensure_topics(settings, bind(plugins, registry, settings), registry)
        kafka = settings.kafka
        server, address = _serve(settings, work)
        gss = GssClient(address)
        counter = ChangelogCounter(
            broker.bootstrap_servers,
            {kafka.topic(kafka.changelog_topic, g.name): g.partitions for g in registry},
        )
        try:
            job.start()
            time.sleep(3.0)
            cpu_before = _job_cpu_seconds()
            producer = Producer(producer_config(kafka, "gss-bench", delivery_timeout_seconds=30.0))
            _produce(producer, examples)
            counter.wait("near_duplicate_of", len(image_items), timeout=900, distinct=True)
            cpu = _job_cpu_seconds() - cpu_before
            first = min(counter.first["dhash"], counter.first["dominant_colors"])
            examples_rate = len(examples) / max(counter.last["near_duplicate_of"] - first, 1e-6)
            # GSS catches up with the backlog (and late-peer re-evaluations drain) first.
            _wait_readable(gss, "images", image_items[-1][1].hex(), "near_duplicate_of@1", 900)
            time.sleep(2.0)
            steady = freshness(settings, gss, [(rate, seconds)])
            time.sleep(2.0)
            burst = freshness(settings, gss, [(rate * BURST, seconds / 3)], warm_up_seconds=0)
        finally:
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
    result: dict[str, Any] = {
        "events_per_s_whole_pipeline": round(examples_rate, 1),
        "cpu_ms_per_event_whole_pipeline": round(cpu * 1000 / len(examples), 4),
    }
    for label, samples in (("", steady), ("_burst", burst)):
        for name, key in (
            ("dhash@1", "freshness"),
            ("near_duplicate_of@1", "freshness_join"),
            ("save_count_last_hour@1", "freshness_window"),
        ):
            values = samples.get(name, [])
            if not values:
                raise RuntimeError(
                    f"no {name} value became readable in GSS during the freshness run; its log:\n"
                    + (work / "gss.log").read_text()[-4000:]
                )
            result[f"{key}{label}_p50_ms"] = round(_percentile(values, 0.5), 1)
            result[f"{key}{label}_p99_ms"] = round(_percentile(values, 0.99), 1)
        result[f"freshness{label}_samples"] = len(samples["dhash@1"])
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(run(Path(__file__).resolve().parent), indent=2))
