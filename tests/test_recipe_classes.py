"""Recipes reach all of PyTorch: `optim.name`, `loss.name` and `scheduler.name` take any torch class by name
(any case) or an import path, with keyword arguments checked against the class before any data is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO

from harness.core.trainer import Trainer
from harness.errors import HarnessError
from harness.recipe.classes import check_classes
from harness.recipe.schema import load_recipe
from harness.train import main
from harness.workflows.training import Run

MLP_RECIPE = str(REPO / "recipes" / "mnist_mlp.yaml")
pytestmark = pytest.mark.usefixtures("one_thread")

USER_OPTIMIZER = '''
import torch


class ScaledSGD(torch.optim.Optimizer):
    """Plain gradient descent with the step multiplied by `scale`."""

    def __init__(self, params, lr=0.1, scale=1.0):
        super().__init__(params, {"lr": lr, "scale": scale})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"] * group["scale"])
'''


@pytest.fixture
def args(fake_data, tmp_path: Path) -> list[str]:
    return [f"data.root={fake_data.root}", "data.batch_size=16", "data.val_size=16", "trainer.epochs=2",
            "scheduler.name=none", "trainer.progress=false", "trainer.device=cpu", f"logging.root={tmp_path / 'runs'}"]


def run_recipe(args: list[str], *overrides: str, trainer_class: type[Trainer] = Trainer) -> Run:
    run = Run(load_recipe(MLP_RECIPE, [*args, *overrides]), recipe_path=MLP_RECIPE, trainer_class=trainer_class)
    summary = run.execute()
    assert summary["epochs_run"] == 2 and summary["test"] is not None
    assert run.run_dir is not None and (run.run_dir / "checkpoints" / "best.pt").is_file()
    return run


def trained(run: Run) -> bool:
    """Every epoch's loss is finite and the weights moved away from the initial ones."""
    assert run.trainer is not None
    losses = [h["train/loss"] for h in run.trainer.history]
    last = torch.load(run.run_dir / "checkpoints" / "last.pt", weights_only=False)["model"]
    return all(torch.isfinite(torch.tensor(losses))) and any(
        not torch.equal(value, init) for value, init in zip(last.values(), _initial_weights(run), strict=True))


def _initial_weights(run: Run) -> list[torch.Tensor]:
    """The model as the run built it before training (same seed)."""
    from harness.core.seed import seed_everything
    from harness.recipe.build import build_model

    seed_everything(run.recipe.trainer.seed)
    return list(build_model(run.recipe.model).state_dict().values())


def test_adadelta_by_name_with_its_own_keyword(args) -> None:
    run = run_recipe(args, "optim.name=adadelta", "optim.lr=1.0", "optim.args.rho=0.95")
    optimizer = run.trainer.optimizer
    assert type(optimizer) is torch.optim.Adadelta
    assert (optimizer.defaults["rho"], optimizer.defaults["lr"]) == (0.95, 1.0)
    assert trained(run)
    config = (run.run_dir / "config.yaml").read_text()
    assert "rho: 0.95" in config  # the run folder records the keyword


def test_an_optimizer_by_torch_import_path_and_in_any_case(args) -> None:
    run = run_recipe(args, "optim.name=torch.optim:RMSprop", "optim.args.alpha=0.9")
    assert type(run.trainer.optimizer) is torch.optim.RMSprop and run.trainer.optimizer.defaults["alpha"] == 0.9
    assert trained(run)
    check_classes(load_recipe(MLP_RECIPE, ["optim.name=NAdam"]).optim, *_loss_and_schedule())


def _loss_and_schedule():
    recipe = load_recipe(MLP_RECIPE)
    return recipe.loss, recipe.scheduler


def test_a_user_optimizer_by_import_path(args, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "my_optim.py").write_text(USER_OPTIMIZER)
    monkeypatch.syspath_prepend(str(tmp_path))
    # optim.weight_decay=0: the class takes none (the recipe sets 1e-4; any other value is refused)
    run = run_recipe(args, "optim.name=my_optim:ScaledSGD", "optim.lr=0.05", "optim.weight_decay=0",
                     "optim.args.scale=0.5")
    optimizer = run.trainer.optimizer
    assert type(optimizer).__name__ == "ScaledSGD" and optimizer.defaults == {"lr": 0.05, "scale": 0.5}
    assert trained(run)


class OneHotTrainer(Trainer):
    """Regresses the one-hot target: a loss such as HuberLoss on class labels."""

    def training_step(self, batch):
        x, y = batch
        return self.loss_fn(self.model(x), F.one_hot(y, 10).float())

    def validation_step(self, batch):
        x, y = batch
        out = self.model(x)
        return self.loss_fn(out, F.one_hot(y, 10).float()), out, y


def test_huber_loss_by_class_name_with_delta(args) -> None:
    run = run_recipe(args, "loss.name=HuberLoss", "loss.args.delta=0.5", trainer_class=OneHotTrainer)
    assert isinstance(run.trainer.loss_fn, torch.nn.HuberLoss) and run.trainer.loss_fn.delta == 0.5
    assert trained(run)


def test_a_scheduler_class_by_name_with_its_arguments(args) -> None:
    run = run_recipe(args, "optim.lr=0.01", "scheduler.name=StepLR", "scheduler.args.step_size=1",
                     "scheduler.args.gamma=0.7")
    assert type(run.trainer.scheduler) is torch.optim.lr_scheduler.StepLR
    assert run.trainer.scheduler_interval == "epoch"
    history = run.trainer.history
    # lr: the rate each epoch trained with; lr_end: after the epoch's scheduler step
    assert [h["lr"] for h in history] == pytest.approx([0.01, 0.007])
    assert [h["lr_end"] for h in history] == pytest.approx([0.007, 0.0049])
    lines = [json.loads(line) for line in (run.run_dir / "history.jsonl").read_text().splitlines()]
    assert [line.get("lr") for line in lines[:2]] == pytest.approx([0.01, 0.007])


def test_a_scheduler_class_stepped_per_step(args) -> None:
    run = run_recipe(args, "optim.lr=0.01", "scheduler.name=exponentiallr", "scheduler.args.gamma=0.5",
                     "scheduler.interval=step")
    assert run.trainer.scheduler_interval == "step"
    steps = run.trainer.global_step // 2  # optimizer steps per epoch
    assert steps >= 2
    # lr: where the epoch started, not where its per-step schedule left it
    assert [h["lr"] for h in run.trainer.history] == pytest.approx([0.01, 0.01 * 0.5 ** steps])
    assert [h["lr_end"] for h in run.trainer.history] == pytest.approx([0.01 * 0.5 ** steps, 0.01 * 0.5 ** (2 * steps)])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.name=adadeltaa", "optim.name 'adadeltaa': unknown; choose a class of torch.optim (ASGD, Adadelta"),
        ("optim.args.rhoo=0.9", "optim.args.rhoo: AdamW takes no keyword 'rhoo'; accepted: lr, betas, eps,"),
        ("optim.args.lr=0.1", "optim.args.lr: set optim.lr instead"),
        ("optim.momentum=0.5", "optim.momentum applies to SGD only, not AdamW: set optim.args.momentum instead"),
        ("optim.name=lbfgs", "optim.name 'lbfgs': LBFGS steps with a closure"),
        ("optim.name=torch.optim:Nope", "module 'torch.optim' has no attribute 'Nope'"),
        ("loss.name=HuberLos", "loss.name 'HuberLos': unknown; choose a class of torch.nn ("),
        ("loss.args.deltaa=1", "loss.args.deltaa: CrossEntropyLoss takes no keyword 'deltaa'; accepted: weight,"),
        ("loss.label_smoothing=0.1 loss.name=mse",
         "loss.label_smoothing applies to CrossEntropyLoss only, not MSELoss"),
        ("scheduler.name=StepLRR", "scheduler.name 'StepLRR': unknown; choose a class of torch.optim.lr_scheduler"),
        ("scheduler.name=StepLR scheduler.args.step_sizee=1",
         "scheduler.args.step_sizee: StepLR takes no keyword 'step_sizee'; accepted: step_size, gamma, last_epoch"),
        ("scheduler.name=StepLR", "scheduler.args: StepLR needs step_size (e.g. scheduler.args.step_size=...)"),
        ("scheduler.name=ReduceLROnPlateau", "ReduceLROnPlateau steps on a metric's value"),
        ("scheduler.args.gamma=0.5", "scheduler.args: scheduler.name 'cosine' is configured by the scheduler.* keys"),
    ],
)
def test_unknown_names_and_keywords_are_one_line_before_the_data(override: str, expected: str, tmp_path: Path,
                                                                  capsys) -> None:
    # No data under the root and no download: a check made after reading the data would fail on that instead.
    code = main([MLP_RECIPE, *override.split(), f"data.root={tmp_path / 'no-data'}", "data.download=false",
                 f"logging.root={tmp_path / 'runs'}", "trainer.device=cpu"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pt"))


def test_bad_values_for_a_known_keyword_are_one_line(tmp_path: Path) -> None:
    from harness.recipe.build import build_optimizer

    recipe = load_recipe(MLP_RECIPE, ["optim.name=adadelta", "optim.args.rho=1.5"])
    with pytest.raises(HarnessError, match=r"^optim \(Adadelta with lr=0.001, weight_decay=0.0001, rho=1.5\): "
                                           r"Invalid rho value: 1.5$"):
        build_optimizer(recipe.optim, [torch.nn.Parameter(torch.zeros(1))])


def test_sgd_adam_and_adamw_are_fused_on_cuda_only() -> None:
    """A fused step takes the GradScaler's inf flag on the device: no .item() per step at precision 16."""
    from harness.recipe.build import fused_keywords

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    for cls in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        assert fused_keywords(cls, {"lr": 0.1}, cuda) == {"lr": 0.1, "fused": True}
        assert fused_keywords(cls, {"lr": 0.1}, cpu) == {"lr": 0.1}
        # the recipe's own choice stands (optim.args.fused=false, or foreach, which fused excludes)
        assert fused_keywords(cls, {"fused": False}, cuda) == {"fused": False}
        assert fused_keywords(cls, {"foreach": True}, cuda) == {"foreach": True}
        fused = cls([torch.nn.Parameter(torch.zeros(1))], **fused_keywords(cls, {}, cuda))  # builds without CUDA
        assert fused.defaults["fused"] and fused._step_supports_amp_scaling
    assert fused_keywords(torch.optim.Adadelta, {}, cuda) == {}  # no fused step to ask for
