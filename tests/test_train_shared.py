"""The train/score path on real FER2013 crops (skipped when ../shared/data is absent)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ferclean.classes import FER7
from ferclean.relabel import RelabelConfig, decide
from ferclean.train import TrainConfig
from ferclean.train.data import cooccurrence_graph, decode_crops, prototype_aus
from ferclean.train.engine import fit, predict


@pytest.mark.shared
def test_ulcag_on_real_fer_crops(fer_dir):
    df = pd.read_csv(fer_dir / "labels.csv")
    df = df[df.split == "train"].head(96)
    x = decode_crops([fer_dir / p for p in df.image_path], 32)
    assert x.shape == (96, 32, 32) and x.std() > 10
    y = np.array([FER7.index(lab) for lab in df.label])
    aus = prototype_aus(list(df.label))
    cfg = TrainConfig(input_size=32, width=4, epochs=1, batch_size=32, checkpoint=False, backbone="cnn",
                      aux_warmup=0.0, au_dim=4, gcn_channels=8)
    res = fit(x, y, "ulcag", cfg, aus, cooccurrence_graph(aus))
    out = predict(res.model, x, "ulcag", res.templates, res.logit_scale)
    assert out["probs"].shape == (96, 7) and np.allclose(out["probs"].sum(1), 1, atol=1e-5)
    d = decide(y, out["probs"].astype(np.float64), out["alpha"], out["sem_dist"], RelabelConfig())
    assert set(d.action) <= {"keep", "relabel", "review"}
