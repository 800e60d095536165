"""The job's latency settings: windows and joins in a slot-sharing group of their own
(compute.stateful_slot_sharing_group: a task slot and a Python worker apart from the steps
chained to the sources), and unaligned checkpoints (compute.unaligned_checkpoints)."""

from __future__ import annotations

from pathlib import Path

import pytest

from compute.flink import gateway
from compute.flink.job import build_pipeline, create_environment, flink_configuration
from compute.flink.run import bound_plugins
from contract.registry import Registry
from contract.settings import load_settings


def _groups(tmp_path: Path, registry: Registry, group: str | None) -> dict[str, str]:
    settings = load_settings(
        kafka={"bootstrap_servers": "127.0.0.1:9"},  # building the job connects to nothing
        compute={
            "checkpoint_dir": (tmp_path / "chk").as_uri(),
            "metrics_port": 0,
            "stateful_slot_sharing_group": group,
        },
    )
    env = create_environment(settings)
    build_pipeline(env, bound_plugins(settings, None, registry), settings)
    graph = env._j_stream_execution_environment.getStreamGraph(False)
    slots = flink_configuration(settings).get_string("taskmanager.numberOfTaskSlots", "")
    nodes = graph.getStreamNodes().toArray()  # a java.util.Collection
    groups = {str(n.getOperatorName()): str(n.getSlotSharingGroup()) for n in nodes}
    return {"slots": slots, **groups}


@pytest.fixture(autouse=True)
def _gateway() -> object:
    yield None
    gateway.shutdown()


def test_windows_and_joins_get_a_group_and_a_slot_of_their_own(
    tmp_path: Path, registry: Registry
) -> None:
    groups = _groups(tmp_path, registry, "stateful")
    assert groups.pop("slots") == "2"
    stateful = {name for name, group in groups.items() if group == "stateful"}
    assert any(name.startswith("windows of ") for name in stateful), groups
    assert any(name.startswith("joins on ") for name in stateful), groups
    assert {"match buckets", "match gather"} <= stateful, groups
    for name, group in groups.items():
        if name.startswith(("map plugins of ", "Source", "extract ", "join inputs from ")):
            assert group == "default", (name, group)


def test_one_group_when_none_is_named(tmp_path: Path, registry: Registry) -> None:
    groups = _groups(tmp_path, registry, None)
    assert groups.pop("slots") == ""
    assert set(groups.values()) == {"default"}


def test_checkpoints_are_unaligned_unless_told_otherwise(tmp_path: Path) -> None:
    key = "execution.checkpointing.unaligned.enabled"
    for setting, expected in ((True, "true"), (False, "")):
        settings = load_settings(
            compute={
                "checkpoint_dir": (tmp_path / "chk").as_uri(),
                "metrics_port": 0,
                "unaligned_checkpoints": setting,
            }
        )
        assert flink_configuration(settings).get_string(key, "") == expected
