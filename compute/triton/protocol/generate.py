"""Regenerate inference_pb2 from inference.proto, or check it for drift.

    python -m compute.triton.protocol.generate          # rewrite inference_pb2.py/.pyi
    python -m compute.triton.protocol.generate --check  # exit 1 if they differ

Needs the dev extra (grpcio-tools, mypy-protobuf); the generated files are committed.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent.parent
PACKAGE = Path("compute") / "triton" / "protocol"
OUTPUTS = ("inference_pb2.py", "inference_pb2.pyi")
HEADER = (
    "# Generated from inference.proto by `python -m compute.triton.protocol.generate`. Do not edit.\n"
    "# ruff: noqa\n"
    "# fmt: off\n"
)


def generate(out_root: Path) -> dict[str, str]:
    """The generated files' text, by file name."""
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT}",
            f"--python_out={out_root}",
            f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
            f"--mypy_out={out_root}",
            str(PACKAGE / "inference.proto"),
        ],
        check=True,
        cwd=ROOT,
    )
    return {name: HEADER + (out_root / PACKAGE / name).read_text() for name in OUTPUTS}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    if "--check" in sys.argv:
        stale = [
            n
            for n, text in fresh.items()
            if not (HERE / n).is_file() or (HERE / n).read_text() != text
        ]
        if stale:
            print(
                f"{', '.join(stale)} out of date with inference.proto: run python -m compute.triton.protocol.generate"
            )
            return 1
        print("compute/triton/protocol matches inference.proto")
        return 0
    for name, text in fresh.items():
        (HERE / name).write_text(text)
    print(f"regenerated {', '.join(str(PACKAGE / n) for n in OUTPUTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
