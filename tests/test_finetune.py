"""OS16-train then OS8-fine-tune (DeepLabv3, Sec. 4.1): the stride switches in place, BatchNorm stays frozen through
fit, the other weights train, and the saved model rebuilds at the new stride."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from seglearn.finetune import finetune_at_output_stride, freeze_batchnorm
from seglearn.model_file import load_model, save_model
from seglearn.models import create_model


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    images, masks = torch.randn(4, 3, 48, 48, generator=g), torch.randint(0, 3, (4, 48, 48), generator=g)
    return DataLoader(TensorDataset(images, masks), batch_size=2)


def test_frozen_batchnorm_stays_in_eval_mode_under_model_train():
    model = create_model("deeplabv3", 3, backbone="resnet18")
    assert freeze_batchnorm(model) > 10
    model.train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not any(m.training for m in bns) and not any(p.requires_grad for m in bns for p in m.parameters())
    assert model.training and model.head.training  # everything else trains


def test_finetune_at_os8_keeps_batchnorm_and_trains_the_rest(tmp_path):
    torch.manual_seed(0)
    model = create_model("deeplabv3", 3, backbone="resnet18")  # built at output stride 16
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = finetune_at_output_stride(model, _loader(), epochs=1, lr=1e-2, optimizer="adamw", device="cpu",
                                        progress=False, num_classes=3)  # fmt: skip
    assert history.epochs == 1 and model.backbone.output_stride == 8
    after = model.state_dict()
    bn_keys = [k for k in before if "running_mean" in k or "running_var" in k or "bn" in k.split(".")[-2]]
    assert bn_keys and all(torch.equal(before[k], after[k]) for k in bn_keys), "BatchNorm moved"
    assert not torch.equal(before["head.1.weight"], after["head.1.weight"]), "the classifier did not train"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert model.backbone(x)[-1].shape[-2:] == (8, 8)  # 64 / 8
    save_model(tmp_path / "m.pt", model)
    reloaded = load_model(tmp_path / "m.pt")
    assert reloaded.backbone.output_stride == 8
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x)["out"], model.eval()(x)["out"])


def test_finetune_refuses_a_model_without_output_stride():
    with pytest.raises(TypeError, match="no set_output_stride"):
        finetune_at_output_stride(create_model("tinyfcn", 3), _loader(), epochs=1)
