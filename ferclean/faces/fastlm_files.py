"""fastlm's packaged files and runtime choice, without importing torch.

The faces stage computes its shard keys (which include the weights' digest and the runtime) in
the parent process and runs fastlm in worker processes; neither should pay torch's ~2 s import
when onnxruntime can run the network. Files (package data under `ferclean/faces/weights/`):

- `fastlm.pt`: float16 state dict + metadata, the source of truth (trained by
  `benchmarks/train_fastlm.py`);
- `fastlm.onnx`: float32 export of the same network (`python -m ferclean.faces.fastlm_net`),
  tagged with the digest of the .pt it came from.

Runtimes (`FacesConfig.fastlm_runtime`): `onnxruntime` (float32, same outputs as torch to ~1e-3
px), `torch` (float32), `torch-bf16` (autocast; within ~0.1 px), `auto` = onnxruntime when
installed and its export matches the .pt, else torch-bf16 on CPUs with native bf16, else torch.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
from functools import lru_cache
from pathlib import Path

from ferclean.faces.backends import BackendUnavailable
from ferclean.hardware import cpu_has_native_bf16

INPUT_SIZE = 48
WEIGHTS_FILE = "fastlm.pt"
ONNX_FILE = "fastlm.onnx"
RUNTIMES = ("onnxruntime", "torch", "torch-bf16")


def _packaged(name: str) -> Path:
    return Path(str(importlib.resources.files("ferclean.faces").joinpath("weights", name)))


def default_weights_path() -> Path:
    """Path of the packaged weights file (it may not exist in a broken install)."""
    return _packaged(WEIGHTS_FILE)


def default_onnx_path() -> Path:
    """Path of the packaged ONNX export of the weights."""
    return _packaged(ONNX_FILE)


def weights_digest(path: str | None = None) -> str:
    """sha256 (first 16 hex) of the weights file, or 'missing' (part of the stage's shard keys)."""
    p = Path(path) if path else default_weights_path()
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else "missing"


@lru_cache(maxsize=1)
def onnx_export_ok() -> bool:
    """onnxruntime is installed and the packaged export was made from the packaged weights."""
    p = default_onnx_path()
    if importlib.util.find_spec("onnxruntime") is None or not p.is_file():
        return False
    return onnx_digest(p) == weights_digest()


def onnx_digest(path: Path) -> str | None:
    """The `fastlm_pt_digest` metadata of an ONNX export (read with onnxruntime), or None."""
    import onnxruntime as ort

    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
    return meta.custom_metadata_map.get("fastlm_pt_digest")


def resolve_runtime(runtime: str = "auto") -> str:
    """The runtime `runtime` ('auto' or one of RUNTIMES) means on this machine.

    Raises ValueError for an unknown name and BackendUnavailable when onnxruntime is asked for
    but missing or its export is stale.
    """
    if runtime == "auto":
        if onnx_export_ok():
            return "onnxruntime"
        return "torch-bf16" if cpu_has_native_bf16() else "torch"
    if runtime not in RUNTIMES:
        raise ValueError(f"fastlm runtime must be auto or one of {', '.join(RUNTIMES)}, not {runtime!r}")
    if runtime == "onnxruntime" and not onnx_export_ok():
        raise BackendUnavailable(
            "fastlm_runtime='onnxruntime' needs the onnxruntime package and "
            f"{default_onnx_path()} exported from the current weights (python -m ferclean.faces.fastlm_net); "
            "use fastlm_runtime='torch' meanwhile")
    return runtime


__all__ = ["INPUT_SIZE", "ONNX_FILE", "RUNTIMES", "WEIGHTS_FILE", "default_onnx_path", "default_weights_path",
           "onnx_digest", "onnx_export_ok", "resolve_runtime", "weights_digest"]
