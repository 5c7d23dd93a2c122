"""fit / evaluate / predict on tiny tensors: learning, history, schedule, options, bad input, progress, DDP (gloo)."""

from __future__ import annotations

import inspect
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from seglearn.engine import EpochStats, build_optimizer, default_device, evaluate, fit, predict, train_one_epoch
from seglearn.metrics import ConfusionMatrix
from seglearn.models import create_model
from seglearn.progress import LivePlot, in_notebook
from seglearn.schedules import poly_factor

NUM_CLASSES = 3
COLORS = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])


pytestmark = pytest.mark.usefixtures("one_thread")  # from conftest


def toy_scenes(n: int, size: tuple[int, int] = (32, 48), seed: int = 0) -> TensorDataset:
    """Blocky 3-class masks; each class paints its own colour plus noise, so a few epochs learn it."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    coarse = torch.randint(0, NUM_CLASSES, (n, 1, h // 8, w // 8), generator=g).float()
    masks = F.interpolate(coarse, size=size, mode="nearest")[:, 0].long()
    images = COLORS[masks].permute(0, 3, 1, 2) + 0.3 * torch.randn(n, 3, h, w, generator=g)
    masks[:, :2, :2] = 255  # a few ignored pixels
    return TensorDataset(images.contiguous(), masks)


@pytest.fixture(scope="module")
def data() -> tuple[DataLoader, DataLoader]:
    train = DataLoader(toy_scenes(16), batch_size=4, shuffle=True, drop_last=True)
    val = DataLoader(toy_scenes(6, seed=1), batch_size=3)
    return train, val


def tiny(seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("tinyfcn", NUM_CLASSES, width=8, **kw)


class BareLogits(nn.Module):
    """A model that returns logits, not a dict, and has no BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, NUM_CLASSES, 1))

    def forward(self, x):
        return self.body(x)


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(data):
    model = tiny()
    history = fit(model, *data, epochs=4, lr=0.1, seed=0, device="cpu", progress=False)
    return model, history


def test_fit_learns_and_records_history(trained, data):
    model, h = trained
    assert h.epochs == 4 and len(h.lr) == 4 and len(h.epoch_time) == 4
    assert h.val_epochs == [1, 2, 3, 4] and len(h.val) == 4
    assert h.train_loss[-1] < h.train_loss[0] * 0.7
    assert h.val[-1].miou > 0.6 and h.val[-1].iou.shape == (NUM_CLASSES,)
    assert h.best_miou == max(s.miou for s in h.val) and h.val_epochs[h.val_epochs.index(h.best_epoch)] == h.best_epoch
    assert h.best is h.val[h.val_epochs.index(h.best_epoch)]
    assert not h.stopped_early and all(t > 0 for t in h.epoch_time)
    # Throughput counts the training loops only: 16 images an epoch, each loop shorter than its epoch (val after it).
    assert h.train_images == [16] * 4 and all(0 < t < e for t, e in zip(h.train_time, h.epoch_time, strict=True))
    assert h.images_per_s == pytest.approx(64 / sum(h.train_time))
    assert h.memory_kind == "process peak RSS" and 50 < h.peak_memory_mib < 64_000  # a CPU: the process's peak
    assert model.training  # fit leaves the model as it trained it; evaluate restored train mode


def test_history_lr_follows_the_poly_schedule(trained, data):
    _, h = trained
    steps = len(data[0])
    # the lr recorded for epoch e is the one used by its last iteration (0-based index e * steps - 1)
    expected = [0.1 * poly_factor(e * steps - 1, 4 * steps) for e in range(1, 5)]
    assert h.lr == pytest.approx(expected, rel=1e-12)


def test_val_scores_equal_an_independent_evaluation(trained, data):
    model, h = trained
    cm = ConfusionMatrix(NUM_CLASSES)
    model.eval()
    with torch.no_grad():
        for x, y in data[1]:
            cm.update(model(x)["out"].argmax(1), y)
    model.train()
    ref = cm.compute()
    scores = evaluate(model, data[1], NUM_CLASSES, device="cpu")
    assert scores.miou == ref.miou == h.val[-1].miou
    assert scores.pixel_acc == ref.pixel_acc
    assert evaluate(model, data[1], None).miou == ref.miou  # num_classes inferred from the logits


def test_train_one_epoch_on_its_own(data):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    loss = lambda output, masks: F.cross_entropy(output["out"], masks, ignore_index=255)  # noqa: E731
    first = train_one_epoch(model, data[0], loss, opt, sched, device=torch.device("cpu"))
    assert isinstance(first, EpochStats) and first.images == 16 and first.num_classes == NUM_CLASSES
    assert first.seconds > 0 and math.isfinite(first.loss) and sched.last_epoch == len(data[0])
    assert first.lr == pytest.approx(0.1 / len(data[0]))  # the lr its last step used
    second = train_one_epoch(model, data[0], loss, opt, device=torch.device("cpu"), grad_clip=1.0, epoch=1, epochs=2)
    assert second.loss < first.loss and model.training


def test_evaluate_with_scales_and_flip_scores_the_averaged_prediction(trained, data):
    model, _ = trained
    assert evaluate(model, data[1], NUM_CLASSES, scales=(1.0,)).miou == evaluate(model, data[1], NUM_CLASSES).miou
    for kw in ({"scales": (0.75, 1.25)}, {"flip": True}, {"scales": (0.5, 1.0), "flip": True}):
        cm = ConfusionMatrix(NUM_CLASSES)
        for x, y in data[1]:
            cm.update(predict(model, x, **kw).argmax(1), y)
        scores = evaluate(model, data[1], NUM_CLASSES, **kw)
        assert scores.miou == cm.compute().miou and scores.pixel_acc == cm.compute().pixel_acc, kw
    eq = FlipEquivariant()
    assert evaluate(eq, data[1], NUM_CLASSES, flip=True).miou == evaluate(eq, data[1], NUM_CLASSES).miou
    with pytest.raises(ValueError, match="scales"):
        evaluate(model, data[1], NUM_CLASSES, scales=())


def test_fit_is_a_short_loop_and_leaves_ddp_to_seglearn_distributed():
    import seglearn.engine as engine

    assert len(inspect.getsourcelines(fit)[0]) <= 80  # signature and docstring included
    assert all(len(inspect.getsourcelines(f)[0]) <= 80 for f in vars(engine).values() if inspect.isfunction(f))
    source = inspect.getsource(engine)
    assert "DistributedDataParallel(" not in source and "import torch.distributed" not in source


def test_seed_makes_a_cpu_run_reproducible(data):
    runs = [fit(tiny(seed=s), data[0], epochs=2, lr=0.05, seed=7, device="cpu", progress=False) for s in (1, 1)]
    assert runs[0].train_loss == runs[1].train_loss


def test_bare_logits_model_adamw_and_grad_clip(data):
    model = BareLogits()
    h = fit(model, *data, epochs=2, lr=1e-2, optimizer="adamw", grad_clip=0.5, channels_last=True, progress=False)
    assert h.epochs == 2 and h.val[-1].iou.shape == (NUM_CLASSES,) and h.train_loss[1] < h.train_loss[0]


def test_optimizer_instance_and_custom_loss_are_used(data):
    model = BareLogits()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    calls = []

    def loss(output, target):
        calls.append(output.shape)
        return F.cross_entropy(output, target, ignore_index=255)

    fit(model, data[0], epochs=1, lr=0.1, optimizer=opt, loss=loss, device="cpu", progress=False)
    assert len(calls) == len(data[0])
    assert opt.param_groups[0]["initial_lr"] == 0.5  # the instance's own lr is the schedule's base


def test_unknown_optimizer_lists_the_choices():
    with pytest.raises(ValueError, match="choose one of: sgd, adamw"):
        build_optimizer("adam", BareLogits(), lr=0.1)
    sgd = build_optimizer("sgd", BareLogits(), lr=0.1)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 1e-4


def test_val_every_and_time_budget(data):
    h = fit(BareLogits(), *data, epochs=3, lr=0.05, val_every=2, device="cpu", progress=False)
    assert h.val_epochs == [2, 3]  # every 2nd epoch, and always the last
    h = fit(BareLogits(), *data, epochs=5, lr=0.05, time_budget_s=0.0, device="cpu", progress=False)
    assert h.epochs == 1 and h.stopped_early and h.val_epochs == [1]


def test_warmup_iters_ramp_the_recorded_lr(data):
    steps = len(data[0])
    h = fit(BareLogits(), data[0], epochs=2, lr=0.1, warmup_iters=2 * steps, device="cpu", progress=False)
    assert h.lr == pytest.approx([0.1 * poly_factor(e * steps - 1, 2 * steps, 0.9, 2 * steps) for e in (1, 2)])
    assert h.lr[0] < 0.1 * poly_factor(steps - 1, 2 * steps)  # below the plain poly value while warming up


def test_default_device_is_cpu_here():
    assert default_device().type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        assert default_device().type in ("mps", "cpu")


# ---------------------------------------------------------------- failures with advice


def test_nan_loss_names_epoch_and_step_and_keeps_last_good_checkpoint(data, tmp_path):
    count = {"n": 0}
    steps = len(data[0])

    def loss(output, target):
        count["n"] += 1
        value = F.cross_entropy(output["out"], target, ignore_index=255)
        return value * float("nan") if count["n"] == steps + 2 else value

    model = tiny()
    with pytest.raises(FloatingPointError, match=r"epoch 2, step 2"):
        fit(model, data[0], epochs=3, lr=0.05, loss=loss, checkpoint_dir=tmp_path, device="cpu", progress=False)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN step never updated the weights


def test_batch_of_one_with_batchnorm_is_refused_up_front():
    loader = DataLoader(toy_scenes(5), batch_size=2)  # last batch has one image
    with pytest.raises(ValueError, match="drop_last=True"):
        fit(tiny(), loader, epochs=1, lr=0.01, device="cpu", progress=False)
    fit(BareLogits(), loader, epochs=1, lr=0.01, device="cpu", progress=False)  # no BatchNorm: fine


@pytest.mark.parametrize(
    "images, masks, match",
    [
        (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), torch.zeros(2, 16, 16).long(), r"float tensor \(N, 3"),
        (torch.zeros(2, 16, 16, 3), torch.zeros(2, 16, 16).long(), r"\(N, 3, H, W\)"),
        (torch.zeros(2, 3, 16, 16), torch.zeros(2, 1, 16, 16, dtype=torch.long), r"integer tensor \(N, H, W\)"),
        (torch.zeros(2, 3, 16, 16), torch.zeros(2, 16, 16), r"integer tensor \(N, H, W\)"),
        (torch.zeros(2, 3, 16, 16), torch.zeros(2, 16, 8, dtype=torch.long), "disagree"),
    ],
)
def test_wrong_batch_shapes_and_dtypes_are_explained(images, masks, match):
    loader = DataLoader(TensorDataset(images, masks), batch_size=2)
    with pytest.raises(ValueError, match=match):
        fit(tiny(), loader, epochs=1, lr=0.01, device="cpu", progress=False)


def test_loader_must_yield_pairs():
    loader = DataLoader(TensorDataset(torch.zeros(4, 3, 8, 8)), batch_size=2)
    with pytest.raises(TypeError, match=r"\(images, masks\) pairs"):
        fit(BareLogits(), loader, epochs=1, lr=0.01, device="cpu", progress=False)


def test_bad_arguments(data):
    with pytest.raises(ValueError, match="checkpoint_dir"):
        fit(BareLogits(), data[0], epochs=1, lr=0.1, resume=True, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        fit(BareLogits(), data[0], epochs=0, lr=0.1, progress=False)


# ---------------------------------------------------------------- predict


class FlipEquivariant(nn.Module):
    """Kernels symmetric left-right, zero padding: model(x.flip(-1)) == model(x).flip(-1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, NUM_CLASSES, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_((self.conv.weight + self.conv.weight.flip(-1)) / 2)

    def forward(self, x):
        return {"out": self.conv(x)}


def test_predict_single_scale_is_the_softmax(trained):
    model, _ = trained
    x = torch.randn(2, 3, 30, 44)
    model.eval()
    with torch.no_grad():
        ref = model(x)["out"].softmax(1)
    model.train()
    probs = predict(model, x)
    assert probs.shape == (2, NUM_CLASSES, 30, 44)
    torch.testing.assert_close(probs, ref, rtol=0, atol=0)
    assert model.training  # restored
    # (3, H, W) -> a batch of one (a batch of one may take another conv kernel: last-bit differences)
    torch.testing.assert_close(predict(model, x[0]), ref[:1], rtol=0, atol=1e-6)


def test_flip_averaging_is_exactly_symmetric(trained):
    x = torch.randn(1, 3, 24, 40)
    eq = FlipEquivariant()
    with torch.no_grad():
        plain = eq(x)["out"].softmax(1)
    # a few ulps apart: averaging the two softmaxes rounds (2 ulps seen with torch 2.14 on Python 3.10)
    torch.testing.assert_close(predict(eq, x, flip=True), plain, rtol=0, atol=1e-6)
    # for any model the flip-averaged prediction of a mirrored image is the mirrored prediction, bit for bit
    model, _ = trained
    mirrored = predict(model, x.flip(-1), flip=True).flip(-1)
    torch.testing.assert_close(mirrored, predict(model, x, flip=True), rtol=0, atol=0)


def test_multi_scale_averages_resized_softmaxes(trained):
    model, _ = trained
    x = torch.randn(1, 3, 32, 48)
    model.eval()
    with torch.no_grad():
        ref = (
            sum(
                F.interpolate(
                    model(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False))["out"],
                    size=(32, 48),
                    mode="bilinear",
                    align_corners=False,
                ).softmax(1)
                for s in (0.5, 1.5)
            )
            / 2
        )
    model.train()
    probs = predict(model, x, scales=(0.5, 1.5))
    torch.testing.assert_close(probs, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 32, 48))


def test_predict_rejects_unnormalized_or_badly_shaped_input():
    with pytest.raises(ValueError, match="float tensor"):
        predict(BareLogits(), torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="float tensor"):
        predict(BareLogits(), torch.zeros(8, 8))
    with pytest.raises(ValueError, match="scales"):
        predict(BareLogits(), torch.zeros(1, 3, 8, 8), scales=(0.0,))


# ---------------------------------------------------------------- progress


def test_progress_bars_and_live_plot_in_fit(data, monkeypatch, capsys):
    points = []

    class Recorder:
        def __init__(self, epochs):
            assert epochs == 2

        def update(self, epoch, train_loss, val_miou):
            points.append((epoch, train_loss, val_miou))

    monkeypatch.setattr("seglearn.engine.LivePlot", Recorder)
    h = fit(BareLogits(), *data, epochs=2, lr=0.05, device="cpu", progress=True, live_plot=True)
    assert points == [(e + 1, h.train_loss[e], h.val[e].miou) for e in range(2)]
    fit(BareLogits(), *data, epochs=2, lr=0.05, device="cpu", progress=True)  # live_plot=None: only in Jupyter
    assert len(points) == 2
    err = capsys.readouterr().err
    assert "epoch" in err or "fit" in err  # tqdm writes to stderr outside Jupyter
    assert not in_notebook()


def test_live_plot_uses_d2l_animator_when_it_imports(monkeypatch):
    added = []

    class Animator:
        def __init__(self, **kw):
            self.kw, self.fig = kw, object()

        def add(self, x, y):
            added.append((x, y))

    fake = types.ModuleType("d2l")
    fake.torch = types.SimpleNamespace(Animator=Animator)
    monkeypatch.setitem(sys.modules, "d2l", fake)
    plot = LivePlot(epochs=3)
    plot.update(1, 0.9, None)
    plot.update(2, 0.7, 0.4)
    plot.update(3, 0.6, math.nan)
    assert plot.backend == "d2l" and plot.animator.kw["legend"] == ["train loss", "val mIoU"]
    assert added == [(1, (0.9, None)), (2, (0.7, 0.4)), (3, (0.6, None))]


def test_live_plot_fallback_draws_both_lines_and_replaces_the_cell_output(monkeypatch):
    shown = []
    monkeypatch.setattr("seglearn.progress._show_replacing", shown.append)
    monkeypatch.setitem(sys.modules, "d2l", None)  # d2l missing
    plot = LivePlot(epochs=3)
    plot.update(1, 1.0, None)
    plot.update(2, 0.8, 0.5)
    lines = plot.figure.axes[0].get_lines()
    assert plot.backend == "matplotlib"
    assert [list(line.get_ydata()) for line in lines] == [[1.0, 0.8], [0.5]]
    assert shown == [plot.figure, plot.figure]


def test_in_notebook_needs_an_ipython_kernel(monkeypatch):
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: None
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert not in_notebook()  # IPython imported, no shell (a script)
    fake.get_ipython = lambda: types.SimpleNamespace(kernel=None)
    assert not in_notebook()  # a terminal IPython
    fake.get_ipython = lambda: types.SimpleNamespace(kernel=object())
    assert in_notebook()  # Jupyter / Colab


# ---------------------------------------------------------------- torch.distributed (one gloo process)


def test_fit_under_a_gloo_process_group_wraps_shards_and_merges(data, tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        train = DataLoader(data[0].dataset, batch_size=4, shuffle=True)
        h = fit(tiny(), train, data[1], epochs=2, lr=0.05, device="cpu", checkpoint_dir=tmp_path, progress=False)
        assert h.epochs == 2 and len(h.val) == 2 and (tmp_path / "last.pt").is_file()
        model = nn.parallel.DistributedDataParallel(tiny())
        assert evaluate(model, data[1], NUM_CLASSES).miou == evaluate(model.module, data[1], NUM_CLASSES).miou
    finally:
        dist.destroy_process_group()
