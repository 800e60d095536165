"""The chaos run: start the stack, load it, inject faults from a seeded schedule, drain,
check the oracles, write the summary. ``python -m tests.chaos --help`` for the options.

Fault kinds (each injected while the load runs; the run waits for the part to come back
before the next fault, bounded):

- ``gss_server``: kill -9 of ``gss serve`` (its ingester and publisher with it), restarted on
  the same port and store;
- ``broker``: a broker outage: every client connection to it cut and new ones refused for
  1-4 s (through a proxy: the stand-in broker cannot restart without losing records);
- ``triton``: kill -9 of tritonserver, down for 1-3 s, restarted on the same ports;
- ``python_worker``: kill -9 of one Python worker of the Flink job (Flink restarts the job's
  tasks from the last checkpoint);
- ``flink_job``: kill -9 of the whole job (MiniCluster: ``gss compute run`` and its JVM;
  cluster: the JobManager and both TaskManagers), restarted from its newest checkpoint;
- ``task_manager`` (cluster only): kill -9 of the TaskManager running the job, a replacement
  started once the job runs on the other one;
- ``subscriber``: the subscriber stalls past its max.poll.interval (it loses its partitions
  and gets the uncommitted events again) or turns slow, alternately.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from contract import processes
from tests.chaos import oracles
from tests.chaos.load import WRITER_SIGNAL, ContentLoad, EventLog, Writer
from tests.chaos.stack import (
    REPO,
    Broker,
    Compute,
    FlinkMode,
    Server,
    Triton,
    descendants,
    processes_mentioning,
    rss_bytes,
)

log = structlog.get_logger(__name__)

ALL_KINDS = (
    "gss_server",
    "broker",
    "triton",
    "python_worker",
    "flink_job",
    "task_manager",
    "subscriber",
)
COMPUTE_SIGNALS = ("dhash@1", "dominant_colors@1")
MODEL_SIGNAL = "safety_score@1"


@dataclass
class Options:
    faults: int = 60
    seed: int = 1
    duration: float | None = None  # the fault phase; None: 12 s a fault
    kinds: tuple[str, ...] = ALL_KINDS
    flink: FlinkMode = "cluster"
    models: bool = True
    content_rate: float = 1.0
    write_rate: float = 60.0
    warmup: float = 10.0
    drain_timeout: float = 300.0
    work: Path | None = None
    report: Path | None = REPO / "bench" / "report.json"
    report_key: str = "long"
    max_server_rss_bytes: int = 2 << 30


@dataclass
class Summary:
    ok: bool = False
    seed: int = 0
    flink: str = ""
    kinds: list[str] = field(default_factory=list)
    faults_planned: int = 0
    faults_injected: dict[str, int] = field(default_factory=dict)
    duration_seconds: float = 0.0
    fault_phase_seconds: float = 0.0
    writer: dict[str, Any] = field(default_factory=dict)
    compute: dict[str, Any] = field(default_factory=dict)
    replay: dict[str, Any] = field(default_factory=dict)
    events: dict[str, Any] = field(default_factory=dict)
    outbox: dict[str, Any] = field(default_factory=dict)
    memory_max_bytes: dict[str, int] = field(default_factory=dict)
    processes_left: list[str] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)
    compute_missing_not_on_topic: int = 0  # acknowledged content events the broker lost
    # The server's gss_outbox_entries gauge after the quiet wait (a diagnostic: the gauge is
    # a running count), and the events the running publisher held back: first delivered only
    # after the graceful stop began (it sends what is left), long after their values.
    outbox_before_stop: float = 0.0
    events_first_delivered_after_stop: int = 0
    losses: int = 0
    duplicates: int = 0
    order_inversions: int = 0
    failures: list[str] = field(default_factory=list)
    fault_log: list[str] = field(default_factory=list)


class Sampler(threading.Thread):
    """Every 2 s: the outbox depth (server metrics) and each part's resident memory."""

    def __init__(self, parts: dict[str, Any], server: Server) -> None:
        super().__init__(name="chaos-sampler", daemon=True)
        self.parts = parts
        self.server = server
        self.outbox: list[float] = []
        self.rss: dict[str, int] = Counter()
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(2.0):
            with contextlib.suppress(Exception):
                self.outbox.append(self.server.metrics().get("gss_outbox_entries", 0.0))
            for name, part in self.parts.items():
                if part is None:
                    continue
                rss = part.rss() if hasattr(part, "rss") else rss_bytes(part.pid)
                self.rss[name] = max(self.rss[name], rss)


def _schedule(options: Options, rng: random.Random) -> list[tuple[float, str]]:
    """(seconds into the fault phase, kind) for every fault: the kinds in shuffled rounds,
    each fault at a uniformly random time."""
    kinds: list[str] = []
    while len(kinds) < options.faults:
        round_ = list(options.kinds)
        rng.shuffle(round_)
        kinds.extend(round_)
    duration = options.duration or 12.0 * options.faults
    times = sorted(rng.uniform(0, duration) for _ in range(options.faults))
    return list(zip(times, kinds[: options.faults], strict=True))


def run_chaos(options: Options) -> Summary:
    import tempfile

    rng = random.Random(options.seed)
    summary = Summary(
        seed=options.seed,
        flink=options.flink,
        kinds=list(options.kinds),
        faults_planned=options.faults,
    )
    if "task_manager" in options.kinds and options.flink != "cluster":
        raise SystemExit("task_manager faults need --flink cluster")
    if "triton" in options.kinds and not options.models:
        raise SystemExit("triton faults need the model plugin (drop --no-models)")
    compute_on = True  # the Flink job always runs: its oracle is checked whatever the faults
    work = options.work or Path(tempfile.mkdtemp(prefix="gss-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    injected: Counter[str] = Counter()
    broker = Broker()
    triton: Triton | None = None
    server: Server | None = None
    compute: Compute | None = None
    writer: Writer | None = None
    content: ContentLoad | None = None
    events: EventLog | None = None
    sampler: Sampler | None = None
    try:
        broker.start()
        bootstrap = broker.bootstrap_servers
        from contract.registry import load_registry
        from contract.settings import load_settings

        settings = load_settings(kafka={"bootstrap_servers": bootstrap})
        registry = load_registry(settings.registry_path)
        server = Server(work, bootstrap).start()
        signals = list(COMPUTE_SIGNALS)
        if compute_on:
            if options.models:
                triton = Triton(work).start()
                signals.append(MODEL_SIGNAL)
            _create_topics(settings, registry, options.models)
            compute = Compute(
                work, bootstrap, triton.url if triton else None, mode=options.flink
            ).start()
            if not compute.wait_running(240):
                raise RuntimeError(f"the Flink job did not start; see {work / 'compute.log'}")
        events = EventLog(bootstrap)
        events.start()
        writer = Writer(server.address, seed=options.seed, rate=options.write_rate)
        writer.start()
        if compute_on:
            content = ContentLoad(bootstrap, seed=options.seed, rate=options.content_rate)
            content.start()
        sampler = Sampler(
            {"gss_server": server, "compute": compute, "broker": broker, "triton": triton}, server
        )
        sampler.start()
        time.sleep(options.warmup)

        # -- faults -------------------------------------------------------------------------
        phase = time.monotonic()
        stall_next = True
        for at, kind in _schedule(options, rng):
            wait = phase + at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            t0 = time.monotonic()
            detail = ""
            if kind == "gss_server":
                server.kill()
                time.sleep(rng.uniform(0, 2))
                server.start()
            elif kind == "broker":
                broker.stop()
                time.sleep(rng.uniform(1, 4))
                broker.restart()
            elif kind == "triton":
                assert triton is not None
                triton.kill()
                time.sleep(rng.uniform(1, 3))
                triton.start()
            elif kind == "python_worker":
                assert compute is not None
                detail = compute.kill_python_worker(rng)
                compute.wait_running(120)
            elif kind == "flink_job":
                assert compute is not None
                detail = compute.kill_job()
                time.sleep(rng.uniform(0, 2))
                compute.start()
                detail += f"; resumed from {compute.resumed_from[-1]}"
                if not compute.wait_running(240):
                    summary.failures.append(
                        f"the Flink job did not come back after fault {sum(injected.values())}"
                    )
            elif kind == "task_manager":
                assert compute is not None
                detail = compute.kill_task_manager(rng)
                compute.replace_task_managers()
            elif kind == "subscriber":
                assert events is not None
                if stall_next:
                    seconds = rng.uniform(12, 18)
                    events.stall(seconds)
                    detail = f"stalled {seconds:.0f} s"
                else:
                    seconds = rng.uniform(5, 10)
                    events.slow(seconds)
                    detail = f"slow {seconds:.0f} s"
                stall_next = not stall_next
            else:
                raise SystemExit(f"unknown fault kind {kind!r}")
            injected[kind] += 1
            line = f"[{time.monotonic() - started:7.1f}s] fault {sum(injected.values())}/{options.faults} {kind} {detail} (back in {time.monotonic() - t0:.1f} s)"
            summary.fault_log.append(line)
            print(line, flush=True)
        summary.fault_phase_seconds = round(time.monotonic() - phase, 1)

        # -- drain --------------------------------------------------------------------------
        print("draining", flush=True)
        writer.stop()
        unsent = content.stop() if content is not None else 0
        if unsent:
            summary.failures.append(f"{unsent} content events never acknowledged by the broker")
        from clients.lookup import GssClient

        with GssClient(server.address, timeout=30) as client:
            dlq_topic = settings.kafka.topic(settings.kafka.dlq_topic, "images")
            acked_content = dict(content.acked) if content is not None else {}
            if compute is not None and acked_content:
                deadline = time.monotonic() + options.drain_timeout
                while time.monotonic() < deadline:
                    lettered = {
                        (d.entity_id, f"{d.signal.name}@{d.signal.version}")
                        for d in oracles.dead_letters(bootstrap, dlq_topic)
                        if d.producer.startswith("flink:")
                    }
                    left = oracles.compute_done(client, acked_content, signals, lettered)
                    if left == 0:
                        break
                    print(
                        f"  {left} (event, plugin) pairs without a value or dead letter yet",
                        flush=True,
                    )
                    time.sleep(5)
            # Let the job commit what it wrote, then stop it: the changelog is complete.
            if compute is not None:
                compute.stop()
            summary.outbox_before_stop = _wait_quiet(server, events, timeout=180)

            writer_check = oracles.check_writer(client, writer.model, WRITER_SIGNAL)
            compute_check = oracles.ComputeCheck()
            if acked_content:
                expected = _expected(settings, registry, acked_content, triton)
                compute_check = oracles.check_compute(
                    client,
                    acked_content,
                    signals,
                    expected,
                    oracles.dead_letters(bootstrap, dlq_topic),
                )
        stop_at = time.monotonic()
        code = server.stop()
        if code != 0:
            summary.failures.append(f"gss serve exited {code} on SIGTERM")
        # The subscriber takes what the draining publisher sent last (idle 10 s, bounded).
        _wait_idle(events, idle=10.0, timeout=90.0)
        events.stop()
        summary.events_first_delivered_after_stop = events.first_seen_after(stop_at)
        sampler.stopping.set()
        replay = oracles.replay_changelog(server.data, work, registry, settings.kafka, bootstrap)
        on_topic = oracles.topic_events(
            bootstrap, settings.kafka.topic(settings.kafka.available_topic, "images")
        )
        event_check = oracles.check_events(events.snapshot(), replay.applied, on_topic)
        if compute_check.missing and content is not None:
            # Are the content events without a value on the content topic at all?
            held = {
                bytes(m.key() or b"").hex() for m in oracles.read_topic(bootstrap, "content.images")
            }
            summary.compute_missing_not_on_topic = sum(1 for e in acked_content if e not in held)
        outbox_left = _outbox_left(server.data, registry)

        summary.writer = {
            **dict(asdict(writer_check).items()),
            "acked_records": writer.model.acked_records,
            "acked_batches": writer.model.acked_batches,
            "failed_calls": dict(writer.model.failed_calls),
        }
        summary.compute = {
            **{k: v for k, v in asdict(compute_check).items() if k != "dead_letters_by_reason"},
            "dead_letters_by_reason": dict(compute_check.dead_letters_by_reason),
            "content_events_sent": len(content.sent) if content is not None else 0,
            "content_events_acked": len(acked_content),
            "job_starts": compute.starts if compute is not None else 0,
        }
        summary.replay = {k: v for k, v in asdict(replay).items() if k != "applied"}
        summary.events = {**asdict(event_check), "subscriber_reopened": events.reopened}
        summary.outbox = {
            "max_depth": max(sampler.outbox, default=0.0),
            "left_after_stop": outbox_left,
            "samples": len(sampler.outbox),
        }
        summary.memory_max_bytes = dict(sampler.rss)
        summary.restarts = {"gss_server": server.starts - 1}
        summary.losses = writer_check.lost + compute_check.missing + event_check.lost
        summary.duplicates = event_check.duplicates
        summary.order_inversions = event_check.order_inversions
        checks = {
            "acknowledged writes lost": writer_check.lost,
            "content events with neither value nor dead letter": compute_check.missing,
            "values different from the plugins' outputs": compute_check.different,
            "keys where the store differs from the changelog replay": replay.keys_differing,
            "partitions whose stored offset differs from the replay's": replay.offsets_differing,
            "values without an availability event": event_check.lost,
            "values with more than one event id": event_check.duplicates,
            "events for no applied value": event_check.unexpected,
            "redelivered ids with other content": event_check.redelivered_different,
            "per-entity order inversions": event_check.order_inversions,
            "outbox entries left after a graceful stop": outbox_left,
            "events the running publisher held back until its graceful stop": (
                summary.events_first_delivered_after_stop
            ),
        }
        summary.failures += [f"{name}: {n}" for name, n in checks.items() if n]
        if writer.model.acked_records == 0:
            summary.failures.append("the writer got no acknowledgement at all")
        if compute is not None and compute_check.values == 0:
            summary.failures.append("the Flink job wrote no value")
        if sampler.rss.get("gss_server", 0) > options.max_server_rss_bytes:
            summary.failures.append(f"gss serve used {sampler.rss['gss_server']} bytes")
    finally:
        for part in (writer, content, events):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop()  # type: ignore[attr-defined]
        if sampler is not None:
            sampler.stopping.set()
        for closing in (
            compute.stop if compute is not None else None,
            server.kill if server is not None else None,
            triton.close if triton is not None else None,
            broker.close,
        ):
            if closing is not None:
                with contextlib.suppress(Exception):
                    closing()
    summary.processes_left = _left_behind(work)
    if summary.processes_left:
        summary.failures.append(f"processes left behind: {summary.processes_left[:5]}")
    summary.faults_injected = dict(injected)
    summary.duration_seconds = round(time.monotonic() - started, 1)
    summary.ok = not summary.failures
    if options.report is not None:
        write_report(options.report, options.report_key, summary)
    return summary


def _create_topics(settings: Any, registry: Any, models: bool) -> None:
    """The job's topics before anything produces to them (the content topic with the
    galaxy's partitions, not a broker default)."""
    from compute.flink.run import bound_plugins, ensure_topics

    plugins = _chaos_plugins(models)
    ensure_topics(settings, bound_plugins(settings, plugins, registry), registry)


def _chaos_plugins(models: bool) -> list[Any]:
    """tests/chaos/plugins.py's plugins, with or without the model one."""
    from compute.loader import load_plugins

    previous = os.environ.get("GSS_CHAOS_MODELS")
    os.environ["GSS_CHAOS_MODELS"] = "1" if models else "0"
    try:
        found = load_plugins([str(REPO / "tests" / "chaos" / "plugins.py")])
    finally:
        if previous is None:
            os.environ.pop("GSS_CHAOS_MODELS", None)
        else:
            os.environ["GSS_CHAOS_MODELS"] = previous
    return [p for p in found if models or p.model is None]


def _expected(settings: Any, registry: Any, events: dict[str, bytes], triton: Triton | None) -> Any:
    plugins = _chaos_plugins(triton is not None)
    models = None
    if triton is not None:
        from compute.inference import connect

        models = connect(settings.triton, triton.url)
    try:
        return oracles.expected_outputs(plugins, settings, registry, events, models)
    finally:
        if models is not None and hasattr(models, "close"):
            models.close()


def _wait_quiet(server: Server, events: EventLog, timeout: float) -> float:
    """Until the subscriber got nothing new for 5 s with the outbox gauge at 0, or for 30 s
    (bounded); the gauge at the end."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    depth = -1.0
    while time.monotonic() < deadline:
        try:
            depth = server.metrics().get("gss_outbox_entries", 0.0)
        except OSError:
            depth = -1.0
        count = len(events.snapshot())
        if count != last:
            last, since = count, time.monotonic()
        idle = time.monotonic() - since
        if (depth == 0 and idle >= 5) or idle >= 30:
            return depth
        time.sleep(0.5)
    return depth


def _wait_idle(events: EventLog, idle: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < idle:
        count = len(events.snapshot())
        if count != last:
            last, since = count, time.monotonic()
        time.sleep(0.5)


def _outbox_left(store_path: Path, registry: Any) -> int:
    from gss.kafka.meta import OUTBOX_PREFIX
    from store.db import SignalStore

    with SignalStore(store_path, list(registry.galaxies)) as store:
        return sum(1 for _ in store.scan_meta(OUTBOX_PREFIX))


def _left_behind(work: Path) -> list[str]:
    """Processes of the run still alive after it (bounded wait for exiting ones)."""
    deadline = time.monotonic() + 15
    while True:
        mine = _ancestors()
        left = {pid: cmd for pid, cmd in processes_mentioning(str(work)).items() if pid not in mine}
        left.update(
            {
                pid: cmd
                for pid, cmd in descendants(os.getpid()).items()
                if any(
                    s in cmd
                    for s in ("tansu", "moto", "gss serve", "tritonserver", "flink", "java")
                )
            }
        )
        left.pop(os.getpid(), None)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
    processes.kill_tracked()
    return [f"{pid}: {cmd[:100]}" for pid, cmd in sorted(left.items())]


def _ancestors() -> set[int]:
    """This process and the ones above it (a wrapper's command line may name the work dir)."""
    out, pid = set(), os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            break
    return out


def write_report(path: Path, key: str, summary: Summary) -> None:
    """Merge the summary into ``path`` under reliability.<key>, keeping every other section."""
    report: dict[str, Any] = {}
    if path.exists():
        report = json.loads(path.read_text())
    section = report.setdefault("reliability", {})
    data = asdict(summary)
    data["fault_log"] = data["fault_log"][-80:]
    section[key] = data
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")


def parse(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--faults", type=int, default=60, help="faults to inject (default 60)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of the fault phase (default: 12 a fault)",
    )
    parser.add_argument(
        "--kinds", default=",".join(ALL_KINDS), help=f"comma-separated, of {', '.join(ALL_KINDS)}"
    )
    parser.add_argument("--flink", choices=["minicluster", "cluster"], default="cluster")
    parser.add_argument("--no-models", action="store_true", help="no Triton, no model plugin")
    parser.add_argument("--content-rate", type=float, default=1.0, help="image events a second")
    parser.add_argument(
        "--write-rate", type=float, default=60.0, help="PutSignals records a second"
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="working directory (default: a temp dir)"
    )
    parser.add_argument(
        "--report",
        default=str(REPO / "bench" / "report.json"),
        help="JSON report to merge into ('' for none)",
    )
    parser.add_argument("--report-key", default="long")
    args = parser.parse_args(argv)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = set(kinds) - set(ALL_KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}")
    return Options(
        faults=args.faults,
        seed=args.seed,
        duration=args.duration,
        kinds=kinds,
        flink=args.flink,
        models=not args.no_models,
        content_rate=args.content_rate,
        write_rate=args.write_rate,
        work=args.work,
        report=Path(args.report) if args.report else None,
        report_key=args.report_key,
    )


def main(argv: list[str] | None = None) -> int:
    summary = run_chaos(parse(argv))
    shown = {k: v for k, v in asdict(summary).items() if k != "fault_log"}
    print(json.dumps(shown, indent=2))
    print("chaos: OK" if summary.ok else f"chaos: FAILED: {summary.failures}", file=sys.stderr)
    return 0 if summary.ok else 1
