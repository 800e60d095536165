"""Lifecycle edits of a registry file that keep everything else of it as written.

``gss signal promote`` and ``gss signal deprecate`` change one pin (a galaxy's ``defaults:``)
or one version's ``state:``. The edit splices the file's text at positions PyYAML's composer
reports, so comments, key order and layout survive (a load-and-dump would drop comments); the
result is checked as a whole registry and must say what was asked before it is written, in one
atomic rename.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml
from pydantic import ValidationError

from contract.errors import InvalidArgumentError, NotFoundError
from contract.registry import Registry, SignalState


def _scalar(node: yaml.Node) -> str | None:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else None


def _entry(mapping: yaml.MappingNode, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    for key_node, value_node in mapping.value:
        if _scalar(key_node) == key:
            return key_node, value_node
    return None


def _mapping(node: yaml.Node | None, what: str) -> yaml.MappingNode:
    if not isinstance(node, yaml.MappingNode):
        raise InvalidArgumentError(f"registry: {what} is not a mapping")
    return node


def _replace(text: str, node: yaml.Node, value: str) -> str:
    if not isinstance(node, yaml.ScalarNode) or node.style not in (None, ""):
        raise InvalidArgumentError(f"registry: cannot edit {node.start_mark}: not a plain value")
    return text[: int(node.start_mark.index)] + value + text[int(node.end_mark.index) :]


def _insert(
    text: str, mapping: yaml.MappingNode, key: str, value: str, *, first: bool = False
) -> str:
    """``text`` with ``key: value`` added to ``mapping``: as its first entry when ``first`` and
    the first key starts a line, else as its last."""
    if not mapping.value:
        raise InvalidArgumentError(
            f"registry: cannot add {key!r} to the empty mapping at {mapping.start_mark}"
        )
    if mapping.flow_style:
        at = int(mapping.end_mark.index) - 1  # before the closing brace
        return f"{text[:at]}, {key}: {value}{text[at:]}"
    first_key, _ = mapping.value[0]
    column, start = int(first_key.start_mark.column), int(first_key.start_mark.index)
    line = " " * column + f"{key}: {value}\n"
    line_start = start - column
    if first and text[line_start:start].strip() == "":
        return text[:line_start] + line + text[line_start:]
    # After the last value's content (its end mark may lie past blank lines and the next
    # key's indentation), at the start of the following line.
    at = int(mapping.value[-1][1].end_mark.index)
    while at > 0 and text[at - 1] in " \n":
        at -= 1
    newline = text.find("\n", at)
    if newline < 0:
        return text + "\n" + line
    return text[: newline + 1] + line + text[newline + 1 :]


def _galaxy_node(root: yaml.Node | None, galaxy: str) -> yaml.MappingNode:
    galaxies = _entry(_mapping(root, "the file"), "galaxies")
    found = _entry(_mapping(galaxies[1] if galaxies else None, "galaxies"), galaxy)
    if found is None:
        raise NotFoundError(f"registry has no galaxy {galaxy!r}")
    return _mapping(found[1], f"galaxy {galaxy}")


def _version_node(
    galaxy_node: yaml.MappingNode, galaxy: str, name: str, version: int
) -> yaml.MappingNode:
    signals = _entry(galaxy_node, "signals")
    if signals is not None and isinstance(signals[1], yaml.SequenceNode):
        for item in signals[1].value:
            if not isinstance(item, yaml.MappingNode):
                continue
            item_name, item_version = _entry(item, "name"), _entry(item, "version")
            if (
                item_name is not None
                and item_version is not None
                and _scalar(item_name[1]) == name
                and _scalar(item_version[1]) == str(version)
            ):
                return item
    raise NotFoundError(f"registry: galaxy {galaxy!r} has no signal {name}@{version}")


def set_default(text: str, galaxy: str, name: str, version: int) -> str:
    """``text`` with ``name``'s pinned default in ``galaxy`` moved to ``version``."""
    root = yaml.compose(text)
    galaxy_node = _galaxy_node(root, galaxy)
    defaults = _entry(galaxy_node, "defaults")
    if defaults is None:
        return _insert(text, galaxy_node, "defaults", f"{{{name}: {version}}}", first=True)
    defaults_node = _mapping(defaults[1], f"galaxy {galaxy}'s defaults")
    pinned = _entry(defaults_node, name)
    if pinned is None:
        return _insert(text, defaults_node, name, str(version))
    return _replace(text, pinned[1], str(version))


def set_state(text: str, galaxy: str, name: str, version: int, state: SignalState) -> str:
    """``text`` with the ``state`` of ``galaxy``'s ``name@version`` set."""
    item = _version_node(_galaxy_node(yaml.compose(text), galaxy), galaxy, name, version)
    current = _entry(item, "state")
    if current is None:
        return _insert(text, item, "state", state.value)
    return _replace(text, current[1], state.value)


def parse(text: str, path: Path) -> Registry:
    """The registry ``text`` describes (checked as a whole), errors naming ``path``."""
    try:
        return Registry.model_validate(yaml.safe_load(text))
    except yaml.YAMLError as exc:
        raise InvalidArgumentError(f"registry {path} is not valid YAML: {exc}") from exc
    except ValidationError as exc:
        raise InvalidArgumentError(f"registry {path} would be invalid:\n{exc}") from exc


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename (readers see the old file or the new one)."""
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
