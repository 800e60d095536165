"""Finding plugins: every :class:`~compute.plugin.Plugin` defined in modules, packages or files.

Targets are module names (``compute.examples.images.dhash``), package names (searched
recursively: ``compute.examples``) or paths to ``.py`` files or directories of them
(``signals/dhash.py``, ``signals/``). Plugins come back in a stable order (by signal).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType

from compute.plugin import Plugin
from contract.errors import InvalidArgumentError


def load_plugins(targets: Sequence[str | Path]) -> list[Plugin]:
    """Import every target and collect its plugins (each once, sorted by galaxy/name@version)."""
    found: dict[int, Plugin] = {}
    for target in targets:
        for module in _modules(target):
            for value in vars(module).values():
                if isinstance(value, Plugin):
                    found[id(value)] = value
    return sorted(found.values(), key=lambda p: (p.galaxy, p.name, p.version))


def _modules(target: str | Path) -> Iterable[ModuleType]:
    text = str(target)
    path = Path(text)
    if text.endswith(".py") or path.is_dir() or "/" in text:
        if not path.exists():
            raise InvalidArgumentError(f"plugin path {path} does not exist")
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            yield load_file(file)
        return
    try:
        module = importlib.import_module(text)
    except ImportError as exc:
        raise InvalidArgumentError(
            f"cannot import plugin module {text!r}: {exc} (give a module name or a .py path)"
        ) from exc
    yield module
    if hasattr(module, "__path__"):
        for info in sorted(
            pkgutil.walk_packages(module.__path__, text + "."), key=lambda i: i.name
        ):
            yield importlib.import_module(info.name)


def load_file(path: Path) -> ModuleType:
    """Import a .py file as a module of its own (named after its resolved path)."""
    path = path.resolve()
    name = "gss_plugin_" + hashlib.sha1(str(path).encode()).hexdigest()[:12] + "_" + path.stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InvalidArgumentError(f"cannot load plugins from {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    # Functions of a file that is not an importable module must travel to Flink's Python
    # workers by value.
    try:
        import cloudpickle  # type: ignore[import-untyped]

        cloudpickle.register_pickle_by_value(module)
    except ImportError:  # only needed where PyFlink (which brings cloudpickle) runs
        pass
    return module
