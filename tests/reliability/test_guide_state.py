"""The guide state that ``pyro_nf.fit`` keeps beside its checkpoint is checked on resume."""

from __future__ import annotations

import pyro
import pytest
import torch
from conftest import gaussian_model

import pyro_nf


def _fit(path, steps, resume=True):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = pyro_nf.FlowGuide(gaussian_model, flow="planar", depth=2)
    pyro_nf.fit(gaussian_model, guide, steps=steps, checkpoint=path, checkpoint_every=5,
                resume=resume, early_stopping=None, progress=False)  # fmt: skip
    return guide


def test_an_edited_guide_state_is_refused(tmp_path):
    path = tmp_path / "run.pt"
    _fit(path, 10)
    side = f"{path}.guide"
    payload = torch.load(side, weights_only=True)
    name = next(iter(payload["buffers"]))
    payload["buffers"][name] = payload["buffers"][name] + 1.0  # edited without a new record
    torch.save(payload, side)
    with pytest.raises(ValueError, match="failed its integrity check: tensor"):
        _fit(path, 20)


def test_a_truncated_guide_state_is_refused(tmp_path):
    path = tmp_path / "run.pt"
    _fit(path, 10)
    side = f"{path}.guide"
    data = open(side, "rb").read()
    open(side, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="^checkpoint: expected the guide state saved by"):
        _fit(path, 20)
    _fit(path, 20, resume=False)  # starting over rewrites it
