"""Regenerate gss/v1/ (the only generated code) from proto/, or check it for drift.

python scripts/gen_proto.py          # rewrite gss/v1/
python scripts/gen_proto.py --check  # exit 1 if gss/v1/ differs from what proto/ gives
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE = Path("gss") / "v1"
BIN = Path(sys.executable).parent
INIT = '''"""Generated from proto/gss/v1 by `make proto`. Do not edit: change the .proto and regenerate."""
'''


def generate(out_root: Path) -> Path:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE).glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    subprocess.run(cmd, check=True, cwd=PROTO_ROOT)
    out = out_root / PACKAGE
    (out / "__init__.py").write_text(INIT)
    (out / "py.typed").write_text("")
    return out


def main() -> int:
    target = ROOT / PACKAGE
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        if "--check" in sys.argv:
            cmp = filecmp.dircmp(fresh, target, ignore=["__pycache__"])
            drift = cmp.left_only + cmp.right_only + cmp.diff_files
            if drift:
                print(
                    f"gss/v1 is out of date with proto/ ({', '.join(sorted(drift))}): run `make proto`"
                )
                return 1
            print("gss/v1 matches proto/")
            return 0
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(fresh, target)
    print(f"regenerated {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
