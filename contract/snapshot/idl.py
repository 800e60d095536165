"""The Thrift twins of the signal messages (thrift/gss_signals.thrift), loaded at run time.

thriftpy2 parses the IDL when first asked; there is no generated code. The IDL ships inside
this package (``contract/snapshot/gss_signals.thrift`` is a link to ``thrift/gss_signals.thrift``
in the repository, packaged as a file by the ``*.thrift`` package-data rule).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from types import ModuleType

import thriftpy2

IDL_NAME = "gss_signals.thrift"
# parquet-thrift's `thrift.class` names the Java class: the IDL's `namespace java`.
JAVA_NAMESPACE = "gss.thrift.v1"
ROW_SUFFIX = "SnapshotRow"


def idl_path() -> Path:
    """Where the IDL is: the packaged copy (or the repository file it links to)."""
    path = Path(str(resources.files("contract.snapshot").joinpath(IDL_NAME)))
    if not path.is_file():
        raise FileNotFoundError(
            f"Thrift IDL {IDL_NAME} is missing from the contract.snapshot package ({path}); "
            "reinstall galaxy-signal-service or restore thrift/gss_signals.thrift"
        )
    return path


@cache
def thrift_module() -> ModuleType:
    """The loaded IDL: ``thrift_module().DHash`` and friends are thriftpy2 struct classes."""
    # The module name must end in "_thrift" for thriftpy2 objects to pickle.
    return thriftpy2.load(str(idl_path()), module_name="gss_signals_thrift")


def struct_name(proto_full_name: str) -> str:
    """The Thrift struct twin of a protobuf message: ``gss.v1.DHash`` -> ``DHash``."""
    return proto_full_name.rsplit(".", 1)[-1]


def value_struct(proto_full_name: str) -> type:
    """The thriftpy2 class twin of a protobuf value type."""
    name = struct_name(proto_full_name)
    cls = getattr(thrift_module(), name, None)
    if cls is None:
        raise LookupError(
            f"{proto_full_name} has no Thrift twin: add `struct {name}` to thrift/{IDL_NAME}"
        )
    return cls  # type: ignore[no-any-return]


def row_struct(proto_full_name: str) -> type:
    """The snapshot-row struct of a value type (``DHashSnapshotRow``)."""
    name = struct_name(proto_full_name) + ROW_SUFFIX
    cls = getattr(thrift_module(), name, None)
    if cls is None:
        raise LookupError(
            f"{proto_full_name} has no snapshot row struct: add `struct {name}` to thrift/{IDL_NAME}"
        )
    return cls  # type: ignore[no-any-return]


def java_class(thrift_cls: type) -> str:
    """The ``thrift.class`` footer value for a struct class."""
    return f"{JAVA_NAMESPACE}.{thrift_cls.__name__}"
