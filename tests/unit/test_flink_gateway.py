"""The gateway JVM of a local job (compute/flink/gateway.py).

Jars PyFlink adds to it (pipeline.jars, the Kafka connector) are seen by every py4j
connection, not only by the Java thread that served the call adding them: py4j's gateway is
not pinned to threads, and a job built while other Python threads used the gateway once
failed to find org.apache.kafka.common.TopicPartition. Flink's temporary files go to a
directory that goes with the JVM, and with a killed owner the next time."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pyflink.java_gateway import get_gateway
from pyflink.util.java_utils import add_jars_to_context_class_loader

from compute.flink import gateway
from compute.flink.connectors import ensure_connectors
from compute.flink.jars import ensure_jars
from compute.flink.job import flink_configuration
from contract.settings import load_settings

KAFKA_CLASS = "org.apache.kafka.common.TopicPartition"
GSS_CLASS = "gss.flink.RowBatcher"


@pytest.fixture(autouse=True)
def _gateway() -> Iterator[None]:
    gateway.own_session()
    yield
    gateway.shutdown()


def _open_connections(count: int) -> None:
    """``count`` Python threads call the JVM at once: py4j opens a connection (and a Java
    thread) for each call it cannot serve with an idle one."""
    jvm = get_gateway().jvm
    with ThreadPoolExecutor(count) as pool:
        list(pool.map(lambda _: jvm.java.lang.Thread.sleep(300), range(count)))


def _connection_loaders() -> list[Any]:
    jvm = get_gateway().jvm
    stacks = jvm.java.lang.Thread.getAllStackTraces()
    return [
        thread.getContextClassLoader()
        for thread in stacks.keySet()
        if gateway._py4j_role(stacks.get(thread)) == "GatewayConnection"
    ]


def _loads(loader: Any, name: str) -> bool:
    try:
        get_gateway().jvm.java.lang.Class.forName(name, False, loader)
    except Exception:
        return False
    return True


def test_jars_added_through_one_connection_are_seen_through_every_other() -> None:
    jars_dir = load_settings().compute.jars_dir
    urls = [p.resolve().as_uri() for p in [*ensure_jars(jars_dir), ensure_connectors(jars_dir)]]
    gateway.share_class_loader()
    _open_connections(3)
    add_jars_to_context_class_loader(urls)  # as pipeline.jars does, on whichever connection
    _open_connections(5)  # and connections opened after the jars were added
    loaders = _connection_loaders()
    assert len(loaders) >= 5
    assert all(_loads(loader, KAFKA_CLASS) for loader in loaders)
    assert all(_loads(loader, GSS_CLASS) for loader in loaders)


def test_each_new_gateway_shares_a_loader_of_its_own() -> None:
    gateway.share_class_loader()
    first = get_gateway()
    gateway.share_class_loader()  # idempotent: nothing to do for the same gateway
    gateway.shutdown()
    jars_dir = load_settings().compute.jars_dir
    gateway.share_class_loader()  # a new JVM, whose threads know nothing of the first
    assert get_gateway() is not first
    _open_connections(3)
    add_jars_to_context_class_loader([ensure_connectors(jars_dir).resolve().as_uri()])
    loaders = _connection_loaders()
    assert len(loaders) >= 3
    assert all(_loads(loader, GSS_CLASS) for loader in loaders)
    assert not any(_loads(loader, KAFKA_CLASS) for loader in loaders)  # not added this time


def _owned_dir(name: str, owner: int) -> Path:
    path = Path(tempfile.gettempdir()) / f"gss-flink-{name}"
    path.mkdir()
    (path / "owner.pid").write_text(str(owner))
    (path / "flink-rpc-akka-left.jar").write_bytes(b"left by a killed JVM")
    return path


def test_flink_temp_files_go_with_the_gateway_and_with_a_killed_owner_later() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = _owned_dir(f"test-dead-{dead.pid}", dead.pid)
    alive = _owned_dir(f"test-alive-{os.getpid()}", os.getppid())
    try:
        settings = load_settings(compute={"mode": "local"})
        path = Path(flink_configuration(settings).get_string("io.tmp.dirs", ""))
        assert path == gateway.temp_dir()
        assert path.is_dir()
        assert not orphan.exists()  # its owner is gone: removed
        assert alive.exists()  # its owner runs: kept
        gateway.shutdown()
        assert not path.exists()
        assert gateway.temp_dir() != path  # a new gateway, a new directory
    finally:
        subprocess.run(["rm", "-rf", str(orphan), str(alive)], check=True)


def test_a_process_that_exits_without_shutdown_removes_its_flink_temp_files() -> None:
    """Exit kills the JVM (contract.processes) and removes its directory, without calling
    into the JVM."""
    script = (
        "from compute.flink import gateway\n"
        "from compute.flink.job import flink_configuration\n"
        "from contract.settings import load_settings\n"
        "gateway.own_session()\n"
        "conf = flink_configuration(load_settings(compute={'mode': 'local'}))\n"
        "print(conf.get_string('io.tmp.dirs', ''), flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path.name.startswith("gss-flink-")
    assert not path.exists()
