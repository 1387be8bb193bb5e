"""The committed audit schema code is exactly what the pinned grpcio-tools generates from proto/."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_generated_code_is_reproducible(tmp_path: pathlib.Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(ROOT / "proto/tollgate/audit/v1/audit.proto"),
        ],
        check=True,
    )
    for name in ("audit_pb2.py", "audit_pb2.pyi"):
        generated = (tmp_path / "tollgate/audit/v1" / name).read_bytes()
        committed = (ROOT / "authz/audit/schema/tollgate/audit/v1" / name).read_bytes()
        assert generated == committed, f"{name} is stale: run make proto"
