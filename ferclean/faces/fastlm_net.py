"""fastlm, torch side: the network, loading the packaged weights, the torch forward and ONNX export.

`ferclean.faces.fastlm` (NumPy only) runs the packaged ONNX export of this network with
onnxruntime when it is installed, so the faces stage's workers need not import torch (~2 s each);
this module is the fallback runtime and what training (`benchmarks/train_fastlm.py`) uses.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ferclean.faces.backends import BackendUnavailable
from ferclean.faces.fastlm_files import INPUT_SIZE, default_weights_path, weights_digest
from ferclean.faces.image import to_batch

BATCH_SIZE = 256
if os.environ.get("FERCLEAN_FASTLM_THREADS"):  # set by fastlm.limit_threads in a faces worker process
    torch.set_num_threads(min(torch.get_num_threads(), int(os.environ["FERCLEAN_FASTLM_THREADS"])))


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FastLandmarkNet(nn.Module):
    """Tiny CNN: (N, 1, 48, 48) grey in [0, 1] -> (N, 68, 2) normalised (x, y).

    Each image is standardised (zero mean, unit std) inside `forward`, so brightness and
    contrast do not matter. Six 3x3 conv + BatchNorm + ReLU blocks, four of stride 2
    (48 -> 24 -> 12 -> 6 -> 3 px), then a linear head that predicts offsets from the mean shape
    (`mean_shape` buffer, (68, 2)). width=16: ~0.3 M parameters, ~5 M multiply-adds per image.
    """

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _block(1, w, 2),                              # 24 px
            _block(w, 2 * w, 2), _block(2 * w, 2 * w),    # 12 px
            _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w),  # 6 px
            _block(4 * w, 8 * w, 2),                      # 3 px
        )
        self.head = nn.Linear(8 * w * 9, 136)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("mean_shape", torch.full((68, 2), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # unbiased std from the first two moments: same value as Tensor.std, ~5x cheaper on CPU
        n = x[0].numel()
        mu = x.mean(dim=(1, 2, 3), keepdim=True)
        var = ((x * x).mean(dim=(1, 2, 3), keepdim=True) - mu * mu) * (n / max(n - 1, 1))
        sd = var.clamp_min(0.0).sqrt().clamp_min(1e-3)
        f = self.features((x - mu) / sd).flatten(1)
        return self.mean_shape + self.head(f).view(-1, 68, 2)


@lru_cache(maxsize=4)
def load_model(path: str | None = None) -> FastLandmarkNet:
    """The fastlm network in eval mode, float32, loaded once per process.

    `path` defaults to the package's weights. Raises BackendUnavailable when the file is missing
    (nothing is ever downloaded).
    """
    p = Path(path) if path else default_weights_path()
    if not p.is_file():
        raise BackendUnavailable(
            f"fastlm weights not found at {p}: reinstall ferclean (the file is package data) or "
            "train them with benchmarks/train_fastlm.py; use FacesConfig(landmarks='dlib') meanwhile")
    blob = torch.load(p, map_location="cpu", weights_only=True)
    model = FastLandmarkNet(width=int(blob["meta"]["width"]))
    model.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    return fuse_for_inference(model)


def fuse_for_inference(model: FastLandmarkNet) -> FastLandmarkNet:
    """Eval-mode copy with each BatchNorm folded into its conv, in channels_last memory format
    (same outputs to ~1e-7; ~2x faster on CPU). For inference only."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    for block in fused.features:
        if isinstance(block[1], nn.BatchNorm2d):
            block[0] = fuse_conv_bn_eval(block[0], block[1])
            block[1] = nn.Identity()
    return fused.to(memory_format=torch.channels_last)


def limit_threads(workers: int) -> None:
    """Cap torch's intra-op threads at cores // workers (>= 1) so worker processes do not oversubscribe."""
    n = max(1, (os.cpu_count() or 1) // max(1, workers))
    if torch.get_num_threads() > n:
        torch.set_num_threads(n)


def to_input(images: Sequence[np.ndarray], size: int = INPUT_SIZE) -> torch.Tensor:
    """uint8 images (H, W) grey or (H, W, 3) BGR, any sizes -> (N, 1, size, size) float in [0, 1]."""
    return torch.from_numpy(to_batch(images, size)).unsqueeze(1).float().div_(255.0)


def predict_torch(images: Sequence[np.ndarray], model: FastLandmarkNet | None = None,
                  batch_size: int = BATCH_SIZE, bf16: bool = False) -> np.ndarray:
    """(N, 68, 2) normalised landmarks (see `ferclean.faces.fastlm`) from the torch network, float64.

    `bf16`: CPU autocast to bfloat16 (~1.7x faster where the CPU has native bf16; outputs within
    ~0.1 px at 48 px of fp32).
    """
    model = model or load_model()
    out = np.empty((len(images), 68, 2), np.float64)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for s in range(0, len(images), batch_size):
            x = to_input(images[s : s + batch_size]).contiguous(memory_format=torch.channels_last)
            out[s : s + batch_size] = model(x).float().numpy()
    return out




def export_onnx(dst: str | Path, weights: str | None = None) -> Path:
    """Write the fused float32 network as ONNX (opset 17, dynamic batch) to `dst`.

    The file records the sha256 prefix of the .pt it came from (metadata `fastlm_pt_digest`), so
    `ferclean.faces.fastlm` refuses a stale export. Needs the `onnx` package (export time only).
    """
    import onnx

    dst = Path(dst)
    model = load_model(weights)
    x = torch.rand(8, 1, INPUT_SIZE, INPUT_SIZE)
    tmp = dst.with_suffix(".tmp.onnx")
    torch.onnx.export(model, (x,), str(tmp), input_names=["x"], output_names=["landmarks"],
                      dynamic_axes={"x": {0: "n"}, "landmarks": {0: "n"}}, opset_version=17, dynamo=False)
    proto = onnx.load(str(tmp))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "fastlm_pt_digest", weights_digest(weights)
    onnx.save(proto, str(dst))
    tmp.unlink()
    return dst


if __name__ == "__main__":  # python -m ferclean.faces.fastlm_net  -> refresh the packaged ONNX export
    from ferclean.faces.fastlm_files import default_onnx_path

    print(export_onnx(default_onnx_path()))
