"""The model folder (`OUT/model/`): the only module that knows its layout.

    model.pt            the network: state dict + semantic templates + logit scale (torch)
    model.json          metadata: classes, AU names, backbone, input size, preprocessing, method,
                        train_label_prior, train_run_id, ...
    au_view.json        the final AU view (ferclean.au_view.AuView.to_dict), when train fitted one
    aus_reference.json  the neutral AU reference of the aus stage, so the folder works on its own
                        for relabel-collection

Train writes it, scoring / relabel-collection / dataset_issues (the network as embedder) / the CLI
read it. The network itself is (de)serialised by :mod:`ferclean.train.model_io` at the paths given
here (`network_path`, `meta_path`); everything else goes through this class. No torch here.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ferclean.au_view import AuView

NETWORK = "model.pt"
META = "model.json"
AU_VIEW = "au_view.json"
AU_REFERENCE = "aus_reference.json"


#: `predictions.method` under which a warm-started run (`curate --init-model`) stores its init model's own
#: opinion of the samples (fold -1), a view the verdict rule mixes in (`relabel.init_model_weight`).
INIT_MODEL_METHOD = "init_model"

class ModelDir:
    """A trained model's folder: `ModelDir(path)` or `ModelDir.of_run(out)` for `OUT/model`."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).expanduser()

    @classmethod
    def of_run(cls, out: str | os.PathLike[str]) -> ModelDir:
        """The model folder of a curate run's output folder."""
        return cls(Path(out) / "model")

    def __repr__(self) -> str:
        return f"ModelDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # -- paths ---------------------------------------------------------------------------------
    @property
    def network_path(self) -> Path:
        return self.path / NETWORK

    @property
    def meta_path(self) -> Path:
        return self.path / META

    @property
    def au_view_path(self) -> Path:
        return self.path / AU_VIEW

    @property
    def au_reference_path(self) -> Path:
        return self.path / AU_REFERENCE

    # -- presence ------------------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether a trained model is here (its metadata file exists)."""
        return self.meta_path.is_file()

    def require(self) -> ModelDir:
        """self, or FileNotFoundError with a one-line reason."""
        if not self.exists():
            raise FileNotFoundError(f"no trained model at {self.path} ({META} missing)")
        return self

    # -- metadata ------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return json.loads(self.require().meta_path.read_text())

    def write_meta(self, meta: dict[str, Any]) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        self.meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
        return self.meta_path

    # -- AU view -------------------------------------------------------------------------------
    def save_au_view(self, view: AuView, au_names: list[str]) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        self.au_view_path.write_text(json.dumps(view.to_dict(au_names)))
        return self.au_view_path

    def load_au_view(self) -> tuple[AuView, list[str]] | None:
        """(view, the AU intensity names it takes, in order), or None when train fitted no AU view."""
        if not self.au_view_path.is_file():
            return None
        spec = json.loads(self.au_view_path.read_text())
        return AuView.from_dict(spec), list(spec["au_names"])

    # -- neutral AU reference ------------------------------------------------------------------
    def save_au_reference(self, source: str | os.PathLike[str]) -> Path:
        """Copy the aus stage's reference file into the folder."""
        self.path.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, self.au_reference_path)
        return self.au_reference_path

    def au_reference(self) -> Path | None:
        """The neutral AU reference that goes with this model: `model.json`'s `neutral_au_reference` when
        it is an existing path, else the folder's copy; None when neither exists."""
        if self.exists():
            ref = self.meta().get("neutral_au_reference")
            if isinstance(ref, str) and Path(ref).is_file():
                return Path(ref)
        return self.au_reference_path if self.au_reference_path.is_file() else None
