"""Locating and configuring the local tritonserver (gss.local.triton), without starting it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from compute.triton import EXAMPLE_MODEL_REPOSITORY
from contract.settings import TritonSettings
from gss.cli import main
from gss.local.triton import (
    LocalTriton,
    TritonStartError,
    find_models,
    python_stub,
    pytriton_paths,
    triton_url,
)

REPOSITORY = EXAMPLE_MODEL_REPOSITORY


def test_default_repository_holds_the_shipped_models() -> None:
    """The settings' default repository is compute/models with every shipped model."""
    assert find_models(REPOSITORY) == [
        "efficientnet_lite0",
        "image_embedding",
        "ocr_cls",
        "ocr_det",
        "ocr_rec",
        "ocr_text",
        "open_nsfw",
        "safety_classifier",
    ]


def test_missing_or_empty_repository_is_a_clear_error(tmp_path: Path) -> None:
    """A missing directory or one without <name>/config.pbtxt names the path and the setting."""
    with pytest.raises(TritonStartError, match="GSS_TRITON__MODEL_REPOSITORY"):
        find_models(tmp_path / "absent")
    with pytest.raises(TritonStartError, match="holds no model"):
        find_models(tmp_path)


def test_nvidia_pytriton_provides_binary_libs_and_stub() -> None:
    """The tritonserver binary, its libraries and the Python 3.11 stub are found."""
    binary, libs, backends = pytriton_paths()
    assert os.access(binary, os.X_OK)
    assert libs.is_dir()
    assert (backends / "python" / "libtriton_python.so").is_file()
    assert python_stub().name == "triton_python_backend_stub"


def test_command_binds_loopback_and_uses_a_private_backend_dir() -> None:
    """The command binds 127.0.0.1 only and points at backend links outside site-packages."""
    server = LocalTriton(REPOSITORY, model_config_name="gpu")
    server._ports = (1001, 1002, 1003)
    try:
        command = server.command()
        for flag in (
            "--grpc-address=127.0.0.1",
            "--http-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
        ):
            assert flag in command
        assert "--grpc-port=1001" in command
        assert "--model-config-name=gpu" in command
        backend_dir = Path(
            next(a for a in command if a.startswith("--backend-directory=")).split("=", 1)[1]
        )
        stub = backend_dir / "python" / "triton_python_backend_stub"
        assert stub.is_symlink()
        assert stub.resolve() == python_stub().resolve()
        assert server.grpc_url == "127.0.0.1:1001"
        assert server.http_url == "127.0.0.1:1002"
    finally:
        server.close()
    assert not backend_dir.exists()


def test_urls_need_a_started_server() -> None:
    """Asking a never-started server for its URL is a programming error, said plainly."""
    with pytest.raises(RuntimeError, match="not been started"):
        _ = LocalTriton(REPOSITORY).grpc_url


def test_configured_url_is_used_as_is() -> None:
    """With TritonSettings.url set, triton_url yields it and starts nothing."""
    with triton_url(TritonSettings(url="triton.models.svc:8000")) as url:
        assert url == "triton.models.svc:8000"


def test_cli_lists_repository_models() -> None:
    """`gss models list` prints the repository and its models."""
    result = CliRunner().invoke(main, ["models", "list"])
    assert result.exit_code == 0, result.output
    assert "image_embedding" in result.output
    assert "safety_classifier" in result.output
