"""gss signal promote / deprecate: registry file edits that keep the file as written."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from contract.registry import DEFAULT_REGISTRY_PATH, load_registry
from gss.cli import main as gss_cli


def registry_with_v2(tmp_path: Path) -> Path:
    """A copy of the example registry: embedding@2 registered, bare names pinned at @1
    (as an operator adds a version, before its backfill)."""
    text = DEFAULT_REGISTRY_PATH.read_text()
    assert "    defaults: {embedding: 1, safety_score: 1}\n" in text
    path = tmp_path / "registry.yaml"
    path.write_text(text)
    return path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(gss_cli, ["signal", *args])
    return result.exit_code, result.output


def test_promote_then_deprecate_edit_only_the_pin_and_the_state(tmp_path: Path) -> None:
    path = registry_with_v2(tmp_path)
    before = path.read_text()
    assert load_registry(path).galaxy("images").signal("embedding").version == 1

    code, out = run("promote", "images/embedding@2", "--registry", str(path))
    assert code == 0, out
    assert "bare 'embedding' was @1, is now @2" in out
    after = path.read_text()
    assert after == before.replace(
        "defaults: {embedding: 1, safety_score: 1}", "defaults: {embedding: 2, safety_score: 1}"
    )

    code, out = run("deprecate", "images/embedding@1", "--registry", str(path))
    assert code == 0, out
    galaxy = load_registry(path).galaxy("images")
    assert galaxy.signal("embedding").version == 2
    assert galaxy.deprecated_refs == {("embedding", 1)}
    assert "# embedding@2 and safety_score@2 (the pretrained models)" in path.read_text()
    assert path.read_text().startswith("# The signal registry")


def test_lifecycle_verbs_refuse_with_clear_errors(tmp_path: Path) -> None:
    path = registry_with_v2(tmp_path)
    original = path.read_text()
    cases = [
        (("promote", "images/embedding@7"), "no signal 'embedding@7'"),
        (("promote", "images/embedding"), "name the version"),
        (("promote", "videos/embedding@2"), "unknown galaxy 'videos'"),
        (("deprecate", "images/embedding@1"), "is the pinned default of 'embedding'"),
        (("deprecate", "images/dhash@1"), "is the pinned default of 'dhash'"),
    ]
    for args, message in cases:
        code, out = run(*args, "--registry", str(path))
        assert code != 0, args
        assert message in out, (args, out)
    assert path.read_text() == original

    run("promote", "images/embedding@2", "--registry", str(path))
    run("deprecate", "images/embedding@1", "--registry", str(path))
    code, out = run("promote", "images/embedding@1", "--registry", str(path))
    assert code != 0
    assert "is deprecated: a deprecated version cannot be the default" in out


def test_dry_run_prints_a_diff_and_writes_nothing(tmp_path: Path) -> None:
    path = registry_with_v2(tmp_path)
    original = path.read_text()
    code, out = run("promote", "images/embedding@2", "--registry", str(path), "--dry-run")
    assert code == 0, out
    assert "-    defaults: {embedding: 1, safety_score: 1}" in out
    assert "+    defaults: {embedding: 2, safety_score: 1}" in out
    assert path.read_text() == original
