"""ModelDir: the one owner of the model folder's layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ferclean.au_view import AuView
from ferclean.model_dir import ModelDir


def test_layout_round_trips_and_missing_model_is_one_clear_error(tmp_path):
    md = ModelDir.of_run(tmp_path)
    assert not md.exists() and md.load_au_view() is None and md.au_reference() is None
    with pytest.raises(FileNotFoundError, match="no trained model at .*model.json missing"):
        md.meta()
    md.write_meta({"classes": ["a", "b"], "neutral_au_reference": None})
    assert md.exists() and md.meta()["classes"] == ["a", "b"]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 2)), np.arange(40) % 2
    x[y == 1, 0] += 3
    view = AuView(2).fit(x, y)
    md.save_au_view(view, ["AU01", "AU02"])
    loaded, names = md.load_au_view()
    assert names == ["AU01", "AU02"] and np.allclose(loaded.predict_proba(x), view.predict_proba(x))
    src = tmp_path / "ref.json"
    src.write_text('{"r": 1}')
    assert md.save_au_reference(src) == md.au_reference() == md.au_reference_path
    # model.json's own reference path wins when it exists
    other = tmp_path / "other.json"
    other.write_text("{}")
    md.write_meta({**md.meta(), "neutral_au_reference": str(other)})
    assert md.au_reference() == other
    assert json.loads(md.au_reference_path.read_text()) == {"r": 1}
