"""Regenerate contract/v1/ (the only generated code) from proto/, or check it for drift.

python scripts/gen_proto.py          # rewrite contract/v1/
python scripts/gen_proto.py --check  # exit 1 if contract/v1/ differs from what proto/ gives

The wire package stays ``gss.v1`` (proto/gss/v1/*.proto, the names every caller sees); only
the Python modules live under ``contract.v1``, so protoc's ``from gss.v1 import ...`` lines are
rewritten to the Python package. gRPC stubs are generated only for files that define a service.
"""

from __future__ import annotations

import filecmp
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_PACKAGE = Path("gss") / "v1"
TARGET = ROOT / "contract" / "v1"
BIN = Path(sys.executable).parent
INIT = '''"""Generated from proto/gss/v1 by `make proto`. Do not edit: change the .proto and regenerate."""
'''
# protoc names Python modules after the proto package; ours live in contract.v1.
_MODULE_REF = re.compile(r"\bgss\.v1(?=\.\w+_pb2\b| import )")
_SERVICE = re.compile(r"^\s*service\s+\w+", re.M)


def _protoc(out_root: Path, protos: list[str], *plugins: str) -> None:
    include = Path(grpc_tools.__file__).parent / "_proto"
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}"]
    for plugin in plugins:
        cmd.append(f"--{plugin}_out={out_root}")
        if plugin.startswith("mypy"):
            cmd.append(f"--plugin=protoc-gen-{plugin}={BIN / f'protoc-gen-{plugin}'}")
    # The mypy plugins report each file they write (under protoc's names): quiet unless it fails.
    done = subprocess.run(
        [*cmd, *protos], check=False, cwd=PROTO_ROOT, capture_output=True, text=True
    )
    if done.returncode:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"protoc failed ({done.returncode}) on {', '.join(protos)}")


def generate(out_root: Path) -> Path:
    files = sorted((PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))
    protos = [str(p.relative_to(PROTO_ROOT)) for p in files]
    with_services = [
        str(p.relative_to(PROTO_ROOT)) for p in files if _SERVICE.search(p.read_text())
    ]
    _protoc(out_root, protos, "python", "mypy")
    _protoc(out_root, with_services, "grpc_python", "mypy_grpc")
    out = out_root / PROTO_PACKAGE
    for path in out.iterdir():
        path.write_text(_MODULE_REF.sub("contract.v1", path.read_text()))
    (out / "__init__.py").write_text(INIT)
    (out / "py.typed").write_text("")
    return out


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        if "--check" in sys.argv:
            cmp = filecmp.dircmp(fresh, TARGET, ignore=["__pycache__"])
            drift = cmp.left_only + cmp.right_only + cmp.diff_files
            if drift:
                print(
                    f"contract/v1 is out of date with proto/ ({', '.join(sorted(drift))}): "
                    "run `make proto`"
                )
                return 1
            print("contract/v1 matches proto/")
            return 0
        shutil.rmtree(TARGET, ignore_errors=True)
        shutil.copytree(fresh, TARGET)
    print(f"regenerated {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
