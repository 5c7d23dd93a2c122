"""hubconf.py: torch.hub builds every registered model from a checkout (source="local")."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seglearn.models import create_model, list_models

REPO = Path(__file__).resolve().parents[1]


def test_hub_lists_every_registered_model():
    """torch.hub.list's rule (public callables of hubconf) run on the local file: exactly the registered models."""
    module = torch.hub._import_module("hubconf", str(REPO / "hubconf.py"))
    entries = sorted(f for f in dir(module) if callable(getattr(module, f)) and not f.startswith("_"))
    assert entries == list_models()


@pytest.mark.parametrize("name", ["tinyfcn", "unet", "deeplabv3"])
def test_hub_load_builds_the_same_model_as_create_model(name):
    kwargs = {"unet": {"base_channels": 8}, "deeplabv3": {"backbone": "resnet18"}}.get(name, {})
    torch.manual_seed(0)
    hub = torch.hub.load(str(REPO), name, source="local", trust_repo=True, num_classes=5, **kwargs)
    torch.manual_seed(0)
    ref = create_model(name, 5, **kwargs)
    assert type(hub) is type(ref)
    hub_state, ref_state = hub.state_dict(), ref.state_dict()
    assert hub_state.keys() == ref_state.keys()
    assert all(torch.equal(hub_state[k], ref_state[k]) for k in ref_state)
    x = torch.randn(2, 3, 32, 48)
    assert hub.eval()(x)["out"].shape == (2, 5, 32, 48)
