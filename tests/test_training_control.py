"""Control of the training step: gradient accumulation, clipping, the non-finite loss policies, bf16,
fast_dev_run, overfit_batches and limit_*_batches, each checked with real numbers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from conftest import REPO
from torch import nn

from harness import NonFiniteLossError, Trainer
from harness.core.callbacks import Callback, ModelCheckpoint
from harness.data import TensorLoader
from harness.metrics import Accuracy
from harness.recipe.build import build_trainer
from harness.recipe.data import build_data
from harness.recipe.schema import validate_recipe
from harness.train import main
from models import MLP

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def loader(n: int, batch_size: int, seed: int = 0, shuffle: bool = True) -> TensorLoader:
    """Random 4x4 uint8 images, labelled by whether the top half is brighter than the bottom."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8)
    targets = (images[:, :, :2].float().mean((1, 2, 3)) > images[:, :, 2:].float().mean((1, 2, 3))).long()
    return TensorLoader(images, targets, batch_size, mean=[0.5], std=[0.25], shuffle=shuffle, seed=seed)


def mlp_trainer(cls: type[Trainer] = Trainer, lr: float = 0.1, **kwargs: Any) -> Trainer:
    """A dropout-free MLP (no batch-dependent layer) with SGD + momentum."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return cls(model, optimizer, nn.CrossEntropyLoss(), device="cpu", progress=False, **kwargs)


def assert_close_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------ gradient accumulation
@pytest.mark.parametrize(("n", "steps"), [(48, 4), (40, 4)])  # 40: groups of 3, 3, 3 and a remainder of 1
def test_accumulating_3_batches_of_4_equals_batches_of_12(n: int, steps: int) -> None:
    """TensorLoader's order depends only on (seed, epoch), so both runs see the samples in the same order."""
    accumulated = mlp_trainer(accumulate_grad_batches=3)
    accumulated.fit(loader(n, 4), epochs=2)
    whole = mlp_trainer()
    whole.fit(loader(n, 12), epochs=2)
    assert accumulated.global_step == whole.global_step == 2 * steps
    assert_close_weights(accumulated.model, whole.model)
    assert accumulated.history[-1]["train/loss"] == pytest.approx(whole.history[-1]["train/loss"], rel=1e-5)


# ------------------------------------------------------------------ clipping
class GradProbe:
    """An optimizer step pre-hook: sees the gradients the step will use (after clipping)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.norms: list[float] = []
        self.max_abs: list[float] = []
        optimizer.register_step_pre_hook(self)

    def __call__(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        self.max_abs.append(max(float(g.abs().max()) for g in grads))


def fit_probed(**kwargs: Any) -> GradProbe:
    trainer = mlp_trainer(lr=0.5, **kwargs)
    probe = GradProbe(trainer.optimizer)
    trainer.fit(loader(64, 8), epochs=1)
    return probe


def test_clip_by_norm_bounds_the_total_gradient_norm() -> None:
    free = fit_probed()
    assert max(free.norms) > 0.05  # without clipping the bound below would bind
    clipped = fit_probed(grad_clip_norm=0.05)
    assert len(clipped.norms) == 8
    assert max(clipped.norms) <= 0.05 * (1 + 1e-5)
    assert sum(math.isclose(norm, 0.05, rel_tol=1e-4) for norm in clipped.norms) >= 4  # the bound was hit


def test_clip_by_value_bounds_every_element() -> None:
    assert max(fit_probed().max_abs) > 0.01
    clipped = fit_probed(grad_clip_value=0.01)
    assert max(clipped.max_abs) <= 0.01
    assert all(math.isclose(v, 0.01, rel_tol=1e-6) for v in clipped.max_abs)  # float32 0.01


# ------------------------------------------------------------------ non-finite losses
class NaNAt(Trainer):
    """Makes the loss NaN at the (epoch, batch index) pairs in `bad` (1-based epoch, 0-based batch)."""

    bad: ClassVar[set[tuple[int, int]]] = set()

    def training_step(self, batch: Any) -> torch.Tensor:
        loss = super().training_step(batch)
        return loss * math.nan if (self.epoch + 1, self.batch_in_epoch) in self.bad else loss


def nan_at(*bad: tuple[int, int]) -> type[NaNAt]:
    return type("NaNRun", (NaNAt,), {"bad": set(bad)})


def test_halt_names_epoch_and_batch_and_leaves_last_pt_untouched(tmp_path: Path) -> None:
    trainer = mlp_trainer(nan_at((2, 2)), callbacks=[ModelCheckpoint(tmp_path, monitor=None)],
                          log_every_n_steps=3)
    trainer.fit(loader(64, 8), epochs=1)
    written = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(NonFiniteLossError, match=r"at epoch 2, batch 3 of the epoch"):
        trainer.fit(loader(64, 8), epochs=3)
    assert (tmp_path / "last.pt").read_bytes() == written
    assert trainer.epoch == 1  # epoch 2 never finished


# The default log_every_n_steps (50) never refreshes in an epoch of 8 batches, and 3 refreshes after
# batches 3 and 6: a NaN after the last refresh is caught only by the check at the epoch's end.
@pytest.mark.parametrize(("every", "bad_batch"), [(None, 7), (None, 0), (3, 6), (3, 7)])
def test_halt_catches_a_nan_after_the_last_progress_refresh(tmp_path: Path, every: int | None,
                                                           bad_batch: int) -> None:
    kwargs = {} if every is None else {"log_every_n_steps": every}
    trainer = mlp_trainer(nan_at((1, bad_batch)), callbacks=[ModelCheckpoint(tmp_path, monitor=None)], **kwargs)
    with pytest.raises(NonFiniteLossError, match=rf"at epoch 1, batch {bad_batch + 1} of the epoch"):
        trainer.fit(loader(64, 8), epochs=2)
    assert trainer.epoch == 0 and trainer.history == []
    assert not (tmp_path / "last.pt").exists()  # the epoch never ended: nothing saved


class Snapshots(Callback):
    """The weights and the skip counter after every training batch."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []
        self.skipped: list[int] = []
        self.steps: list[int] = []

    def on_train_batch_end(self, trainer: Trainer, batch_idx: int, loss: torch.Tensor) -> None:
        self.weights.append(torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()]))
        self.skipped.append(trainer.nonfinite_skipped)
        self.steps.append(trainer.global_step)


def test_skip_drops_the_update_and_counts() -> None:
    snapshots = Snapshots()
    trainer = mlp_trainer(nan_at((1, 2), (1, 3)), on_nonfinite="skip", callbacks=[snapshots])
    trainer.fit(loader(64, 8), epochs=1)
    assert snapshots.skipped == [0, 0, 1, 2, 0, 0, 0, 0]
    assert snapshots.steps == [1, 2, 2, 2, 3, 4, 5, 6]
    assert torch.equal(snapshots.weights[1], snapshots.weights[2])  # no update from a NaN loss
    assert torch.equal(snapshots.weights[2], snapshots.weights[3])
    assert not torch.equal(snapshots.weights[3], snapshots.weights[4])  # training went on
    assert torch.isfinite(snapshots.weights[-1]).all()


def test_skip_halts_after_max_nonfinite_skips_in_a_row() -> None:
    trainer = mlp_trainer(nan_at(*[(1, i) for i in range(3, 8)]), on_nonfinite="skip", max_nonfinite_skips=3)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss in 3 steps in a row \(epoch 1, step 4\)"):
        trainer.fit(loader(64, 8), epochs=1)
    assert trainer.global_step == 3


def test_skip_with_accumulation_drops_a_group_with_any_nonfinite_batch() -> None:
    """A NaN in the first batch of a group poisons the accumulated gradients even though the group's
    last loss is finite: the whole group must be dropped."""
    snapshots = Snapshots()
    trainer = mlp_trainer(nan_at((1, 2)), on_nonfinite="skip", accumulate_grad_batches=2, callbacks=[snapshots])
    trainer.fit(loader(64, 8), epochs=1)
    assert snapshots.steps == [0, 1, 1, 1, 1, 2, 2, 3]
    assert torch.equal(snapshots.weights[1], snapshots.weights[3])
    assert torch.isfinite(snapshots.weights[-1]).all()


# ------------------------------------------------------------------ bf16
def test_bf16_autocast_trains_on_cpu() -> None:
    dtypes = []

    class Spy(Trainer):
        def training_step(self, batch: Any) -> torch.Tensor:
            inputs, target = batch
            outputs = self.model(inputs)
            dtypes.append(outputs.dtype)
            return self.loss_fn(outputs, target)

    trainer = mlp_trainer(Spy, lr=0.05, precision="bf16", metrics={"acc": Accuracy(2)})
    history = trainer.fit(loader(256, 16), loader(64, 64, seed=1, shuffle=False), epochs=4)
    assert set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay fp32
    assert history[-1]["train/loss"] < 0.3 * history[0]["train/loss"]
    assert history[-1]["val/loss"] < 0.3 * history[0]["val/loss"]
    assert history[-1]["val/acc"] > 0.9


# ------------------------------------------------------------------ fast_dev_run, overfit_batches, limits
def test_fast_dev_run_runs_one_batch_and_writes_nothing(fake_data, tmp_path: Path, monkeypatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    calls = {"train": 0, "val": 0}
    training_step, validation_step = Trainer.training_step, Trainer.validation_step

    def count_train(self: Trainer, batch: Any) -> torch.Tensor:
        calls["train"] += 1
        return training_step(self, batch)

    def count_val(self: Trainer, batch: Any) -> Any:
        calls["val"] += 1
        return validation_step(self, batch)

    monkeypatch.setattr(Trainer, "training_step", count_train)
    monkeypatch.setattr(Trainer, "validation_step", count_val)
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    code = main([str(REPO / "recipes/mnist.yaml"), "trainer.fast_dev_run=true", f"data.root={fake_data.root}",
                 "data.batch_size=4", "data.eval_batch_size=4", "data.val_size=8", "trainer.device=cpu"])
    out = capsys.readouterr().out
    assert code == 0
    # one training batch, one validation and one test batch, and the test batch that checks the
    # model's outputs against the data before the first step
    assert calls == {"train": 1, "val": 3}
    assert "run folder (none: fast_dev_run)" in out
    assert list(workdir.iterdir()) == []  # no runs/ folder, no checkpoint, no event file


def test_overfit_batches_memorises_those_batches(fake_data) -> None:
    recipe = validate_recipe({
        "model": {"name": "mlp", "args": {"in_features": 784, "hidden": [64], "num_classes": 10}},
        "data": {"root": str(fake_data.root), "batch_size": 8},
        "optim": {"name": "adam", "lr": 3e-3},
        "trainer": {"overfit_batches": 2, "epochs": 15, "device": "cpu", "progress": False},
    })
    torch.manual_seed(0)
    data = build_data(recipe.data, torch.device("cpu"), seed=0, overfit_batches=2)
    assert data.val is data.train and len(data.train) == 2  # the same 16 images, in a fixed order
    trainer = build_trainer(recipe, MLP(784, [64], 10), data, run_dir=None, device=torch.device("cpu"))
    history = trainer.fit(data.train, data.val, epochs=recipe.trainer.epochs)
    assert history[0]["val/acc"] < 0.5  # random pixels, random labels: chance is 0.1
    assert history[-1]["val/acc"] == 1.0
    assert trainer.global_step == 2 * 15


def test_limit_train_and_val_batches_are_honoured() -> None:
    seen: list[int] = []

    class Counter(Callback):
        def on_train_batch_end(self, trainer: Trainer, batch_idx: int, loss: torch.Tensor) -> None:
            seen.append(batch_idx)

    val_calls = []

    class CountVal(Trainer):
        def validation_step(self, batch: Any) -> Any:
            val_calls.append(len(batch[0]))
            return super().validation_step(batch)

    trainer = mlp_trainer(CountVal, limit_train_batches=3, limit_val_batches=2, callbacks=[Counter()])
    history = trainer.fit(loader(80, 8), loader(80, 16, shuffle=False), epochs=2)  # 10 and 5 batches
    assert seen == [0, 1, 2, 0, 1, 2]
    assert trainer.global_step == 6
    assert val_calls == [16, 16, 16, 16]
    assert [h["epoch"] for h in history] == [1, 2]


def test_the_final_test_covers_the_whole_test_split_and_says_so(fake_data, tmp_path: Path, capsys) -> None:
    # limit_val_batches is a budget for validation; it must not shrink the reported test figure.
    args = [str(REPO / "recipes/mnist_mlp.yaml"), f"data.root={fake_data.root}", "data.batch_size=4",
            "data.eval_batch_size=4", "data.val_size=8", "trainer.epochs=1", "trainer.limit_val_batches=1",
            "trainer.progress=false", "trainer.device=cpu", f"logging.root={tmp_path / 'runs'}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    [summary_path] = (tmp_path / "runs").glob("*/*/summary.json")
    import json

    summary = json.loads(summary_path.read_text())
    assert summary["test_samples"] == 20  # the fake test split's 20 images, not one batch of 4
    assert "20 samples: the whole test split" in out
    assert main([*args, "trainer.limit_test_batches=2"]) == 0
    out = capsys.readouterr().out
    assert "only 8 samples: the first 2 batches of the test split (trainer.limit_test_batches)" in out


@pytest.mark.parametrize(("override", "expected"), [
    ("model.args.num_classes=5", "one test batch through the model and loss.name=cross_entropy fails"),
    ("model.args.num_classes=12", "outputs of shape (20, 12)"),
])
def test_a_model_that_does_not_fit_the_data_fails_before_the_first_step(fake_data, tmp_path: Path, capsys,
                                                                        override: str, expected: str) -> None:
    calls = []

    class Counting(Callback):
        def on_train_batch_end(self, trainer: Trainer, batch_idx: int, loss: torch.Tensor) -> None:
            calls.append(batch_idx)

    code = main([str(REPO / "recipes/mnist_mlp.yaml"), f"data.root={fake_data.root}", "data.val_size=8",
                 "data.eval_batch_size=20", "trainer.progress=false", "trainer.device=cpu", override,
                 f"logging.root={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and expected in err and "10 classes" in err, err
    assert not list((tmp_path / "runs").glob("*/*"))  # no run folder left behind


def test_a_split_with_no_samples_is_refused_before_training(tmp_path: Path, capsys) -> None:
    from conftest import write_fake_mnist

    root = tmp_path / "data"
    write_fake_mnist(root, n_train=40, n_test=20)
    # Keep class 3 only in the test split by writing a test split that lacks it.
    import numpy as np
    from conftest import write_idx

    labels = np.array([0, 1, 2] * 6 + [0, 1], dtype=np.uint8)
    write_idx(root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", labels)
    code = main([str(REPO / "recipes/mnist_mlp.yaml"), f"data.root={root}", "data.val_size=4",
                 "data.classes=[3,4]", "trainer.progress=false", "trainer.device=cpu",
                 f"logging.root={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "the test split has no samples after data.classes=[3, 4]" in err, err


def test_logging_tensorboard_false_writes_history_but_no_event_file(fake_data, tmp_path: Path) -> None:
    args = [str(REPO / "recipes/mnist_mlp.yaml"), f"data.root={fake_data.root}", "data.batch_size=8", "data.val_size=8",
            "trainer.epochs=1", "trainer.progress=false", "trainer.device=cpu", f"logging.root={tmp_path / 'runs'}"]
    assert main([*args, "logging.tensorboard=false"]) == 0
    [run] = (tmp_path / "runs").glob("*/*")
    assert (run / "history.jsonl").is_file() and (run / "summary.json").is_file()
    assert not list(run.glob("events.out.tfevents.*"))
    assert main(args) == 0  # the default still writes them
    assert len(list((tmp_path / "runs").glob("*/*/events.out.tfevents.*"))) == 1
