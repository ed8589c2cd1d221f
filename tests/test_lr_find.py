"""`harness.lr_find`: the sweep, its suggestion, the bit-exact restore, and the command's run folder."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, write_fake_mnist
from torch import nn

from harness import Trainer
from harness.lr_find import main
from harness.workflows.lr_range import _suggest, find_lr


def regression_batches(n_batches: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, 1, generator=g)
    batches = []
    for _ in range(n_batches):
        x = torch.randn(32, 16, generator=g)
        batches.append((x, x @ w + 0.1 * torch.randn(32, 1, generator=g)))
    return batches


def make_trainer(optimizer: str = "adamw") -> Trainer:
    torch.manual_seed(0)
    # Dropout: the sweep draws random masks, so the RNG state must be restored too.
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.2), nn.BatchNorm1d(32), nn.Linear(32, 1))
    opt = (torch.optim.AdamW(model.parameters(), lr=1e-3) if optimizer == "adamw"
           else torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9))
    return Trainer(model, opt, nn.MSELoss(), device="cpu", progress=False)


def snapshot(trainer: Trainer) -> tuple[dict, dict]:
    import copy

    return copy.deepcopy(trainer.model.state_dict()), copy.deepcopy(trainer.optimizer.state_dict())


def assert_same(a, b) -> None:
    """Equal nested state, tensors compared bit for bit."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b) and a.dtype == b.dtype
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_model_optimizer_and_rng_are_restored_bit_exactly(optimizer: str) -> None:
    data = regression_batches()
    swept, plain = make_trainer(optimizer), make_trainer(optimizer)
    for trainer in (swept, plain):
        torch.manual_seed(1)
        trainer.fit(data[:3], epochs=1)  # the optimizer has state (moments, momentum) to lose
    assert_same(snapshot(swept), snapshot(plain))
    before = snapshot(swept)
    torch.manual_seed(123)
    result = find_lr(swept, data, start_lr=1e-5, end_lr=1.0, steps=20)
    assert len(result.lrs) >= 2
    assert_same(snapshot(swept), before)
    assert swept.optimizer.param_groups[0]["lr"] == (1e-3 if optimizer == "adamw" else 1e-2)
    assert swept.model.training  # fit left it in train mode; so does the sweep
    # The strongest check: training on from here is identical to never having swept (dropout masks included).
    after_sweep = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after_sweep, torch.rand(3))
    torch.manual_seed(7)
    swept.fit(data, epochs=2)
    torch.manual_seed(7)
    plain.fit(data, epochs=2)
    assert_same(snapshot(swept), snapshot(plain))


def test_sweep_is_exponential_and_stops_when_the_loss_diverges() -> None:
    trainer = make_trainer("sgd")
    result = find_lr(trainer, regression_batches(), start_lr=1e-4, end_lr=1e4, steps=100)
    ratios = np.diff(np.log(result.lrs))
    assert result.lrs[0] == pytest.approx(1e-4)
    assert np.allclose(ratios, math.log(1e8) / 99)  # a constant factor per step: 8 decades in 99 steps
    # SGD on a linear-regression loss blows up long before lr 1e4
    assert result.stopped_early and len(result.lrs) < 100
    last, best = result.smoothed[-1], min(result.smoothed[:-1])
    assert not math.isfinite(last) or last > 4 * best
    assert result.lrs[0] < result.suggestion < result.min_loss_lr < result.lrs[-1]
    assert result.min_over_10 == pytest.approx(result.min_loss_lr / 10)


def test_suggestion_is_the_steepest_point_before_the_minimum() -> None:
    lrs = list(np.logspace(-6, 0, 61))  # 10 points per decade
    log_lr = np.log10(lrs)
    # falls fastest at 1e-3, lowest at 1e-1.5, then rises (a divergence spike after the minimum is ignored)
    loss = 2 - np.tanh(2 * (log_lr + 3)) + 0.05 * (log_lr + 1.5) ** 2
    loss[-1] = 50.0
    steepest, lowest = _suggest(lrs, list(loss))
    assert steepest == pytest.approx(1e-3)
    assert lowest == pytest.approx(lrs[int(np.argmin(loss))])
    assert _suggest([1e-3, 1e-2, 1e-1], [1.0, 2.0, 3.0]) == (None, 1e-3)  # never falls: no suggestion


def test_command_writes_png_json_and_tensorboard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_fake_mnist(tmp_path / "data", n_train=300, n_test=20)
    code = main([str(REPO / "recipes" / "mnist_mlp.yaml"), f"data.root={tmp_path / 'data'}", "data.val_size=50",
                 f"logging.root={tmp_path / 'runs'}", "trainer.progress=false", "--steps", "25", "--start", "1e-5",
                 "--end", "1"])
    out = capsys.readouterr().out
    assert code == 0
    (run_dir,) = (tmp_path / "runs" / "mnist_mlp-lr_find").iterdir()
    report = json.loads((run_dir / "lr_find.json").read_text())
    assert 2 <= len(report["points"]) <= 25
    assert set(report["points"][0]) == {"lr", "loss", "smoothed_loss"}
    assert report["points"][0]["lr"] == pytest.approx(1e-5)
    assert report["suggestion_rule"].startswith("steepest descent")
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {run_dir}/lr_find.png" in out and "suggested lr" in out

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {"lr_find/lr", "lr_find/loss", "lr_find/smoothed_loss"} <= set(events.Tags()["scalars"])
    assert events.Tags()["images"] == ["lr_find/curve"]
    losses = [e.value for e in events.Scalars("lr_find/loss")]
    assert losses == pytest.approx([p["loss"] for p in report["points"]], rel=1e-6)


def test_bad_range_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_fake_mnist(tmp_path / "data", n_train=60, n_test=20)
    code = main([str(REPO / "recipes" / "mnist_mlp.yaml"), f"data.root={tmp_path / 'data'}", "data.val_size=10",
                 f"logging.root={tmp_path / 'runs'}", "--start", "1", "--end", "0.1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == "error: lr_find: need 0 < start < end, got start=1.0, end=0.1\n"
    assert not (tmp_path / "runs").exists()


def test_parameter_groups_keep_their_ratio_and_the_subclass_step_is_used() -> None:
    seen: list[tuple[float, float]] = []

    class RecordingTrainer(Trainer):
        def training_step(self, batch):
            seen.append((self.optimizer.param_groups[0]["lr"], self.optimizer.param_groups[1]["lr"]))
            return super().training_step(batch)

    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD([{"params": model[0].parameters()},
                                 {"params": model[2].parameters(), "lr": 1e-3}], lr=1e-2)
    trainer = RecordingTrainer(model, optimizer, nn.MSELoss(), device="cpu", progress=False)
    result = find_lr(trainer, regression_batches(), start_lr=1e-6, end_lr=1e-2, steps=10)
    assert [first for first, _ in seen] == pytest.approx(result.lrs)
    assert [second for _, second in seen] == pytest.approx([lr / 10 for lr in result.lrs])
    assert [g["lr"] for g in optimizer.param_groups] == [1e-2, 1e-3]


def test_each_step_is_the_accumulated_step_training_takes() -> None:
    """With accumulate_grad_batches=4 a sweep step averages 4 batches' gradients: the same sweep as on
    batches 4 times larger, loss for loss (a linear model and a mean loss, so the two are equal)."""
    small = regression_batches(n_batches=16)
    large = [(torch.cat([x for x, _ in small[i:i + 4]]), torch.cat([y for _, y in small[i:i + 4]]))
             for i in range(0, 16, 4)]
    results = []
    for data, accumulate in ((small, 4), (large, 1)):
        torch.manual_seed(0)
        model = nn.Linear(16, 1)
        trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=1e-2), nn.MSELoss(), device="cpu",
                          progress=False, accumulate_grad_batches=accumulate)
        results.append(find_lr(trainer, data, start_lr=1e-4, end_lr=1.0, steps=12))
    accumulated, one_batch = results
    assert len(accumulated.lrs) == len(one_batch.lrs) == 12  # 12 steps: 48 small batches, the data cycled
    assert accumulated.lrs == pytest.approx(one_batch.lrs)
    assert accumulated.losses == pytest.approx(one_batch.losses, rel=1e-5)
    assert accumulated.losses[-1] < 0.5 * accumulated.losses[0]  # it trained: the steps had an effect


def test_try_command_keeps_the_overrides_and_states_the_effective_batch(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    write_fake_mnist(tmp_path / "data", n_train=300, n_test=20)
    overrides = [f"data.root={tmp_path / 'data'}", "data.val_size=50", "data.batch_size=16",
                 "trainer.accumulate_grad_batches=2", "optim.lr=5e-3", "model.args.hidden=[32]",
                 f"logging.root={tmp_path / 'runs'}", "trainer.progress=false"]
    code = main([str(REPO / "recipes" / "mnist_mlp.yaml"), *overrides, "--steps", "30", "--start", "1e-5",
                 "--end", "10"])
    out = capsys.readouterr().out
    assert code == 0
    (run_dir,) = (tmp_path / "runs" / "mnist_mlp-lr_find").iterdir()
    report = json.loads((run_dir / "lr_find.json").read_text())
    assert report["batch_size"] == 16 and report["accumulate_grad_batches"] == 2
    assert report["effective_batch_size"] == 32
    assert "each step: batch 32 (2 accumulated batches of 16)" in out
    assert report["suggestion"] is not None, out
    (line,) = [line for line in out.splitlines() if line.startswith("try: ")]
    # What a shell makes of the printed line: the user's overrides, the recipe's optim.lr replaced.
    kept = [o for o in overrides if o != "optim.lr=5e-3"]
    assert shlex.split(line.removeprefix("try: ")) == [
        "python", "-m", "harness.train", str(REPO / "recipes" / "mnist_mlp.yaml"), *kept,
        f"optim.lr={report['suggestion']:.2g}"]


@pytest.mark.parametrize(("start", "end"), [("1e-7", "inf"), ("-inf", "1"), ("nan", "1")])
def test_non_finite_range_is_refused(tmp_path: Path, start: str, end: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    code = main([str(REPO / "recipes" / "mnist_mlp.yaml"), f"logging.root={tmp_path / 'runs'}", f"--start={start}",
                 f"--end={end}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: lr_find: --start and --end must be finite numbers, got start={float(start)}, "
                          f"end={float(end)}")
    assert not (tmp_path / "runs").exists()
