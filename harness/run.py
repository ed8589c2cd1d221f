"""One training run of a recipe, as a self-describing folder.

runs/<name>/<timestamp>/
    config.yaml         the resolved recipe (file + overrides + defaults)
    history.jsonl       one JSON object per logged step: each epoch's scalars, then the test scalars
    summary.json        best epoch, final validation and test metrics, wall time, device, versions
    events.out.tfevents.*   TensorBoard scalars (train/, val/, test/, lr, epoch_seconds, samples_per_s)
    checkpoints/last.pt, checkpoints/best.pt
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from harness.build import Data, build_data, build_model, build_trainer, check_monitors, init_model
from harness.callbacks import Callback, ModelCheckpoint, callback_key
from harness.checkpoint import atomic_save, read_checkpoint
from harness.config import Recipe, dump_yaml
from harness.device import resolve_device
from harness.distributed import broadcast_object, broadcast_tensors, init_distributed
from harness.errors import HarnessError
from harness.schedules import PER_EPOCH
from harness.seed import seed_everything
from harness.trainer import Trainer, unwrap_model


class Run:
    """Build everything from a recipe, fit, test the best checkpoint, write summary.json.

    `run_dir` puts the run in that folder instead of <logging.root>/<name>/<time>/ (sweep trials);
    `callbacks` are added to the Trainer's (a sweep's pruning); `verbose=False` prints only what
    the Trainer prints (no resolved recipe, no test line).
    """

    def __init__(self, recipe: Recipe, recipe_path: str | Path | None = None, resume: str | Path | None = None,
                 trainer_class: type[Trainer] = Trainer, run_dir: str | Path | None = None,
                 callbacks: Sequence[Callback] = (), verbose: bool = True) -> None:
        self.recipe = recipe
        self.recipe_path = Path(recipe_path) if recipe_path is not None else None
        self.resume = Path(resume) if resume is not None else None
        self.trainer_class = trainer_class
        self.callbacks = list(callbacks)
        self.verbose = verbose
        self.run_dir: Path | None = Path(run_dir) if run_dir is not None else None
        self.trainer: Trainer | None = None
        self.data: Data | None = None

    def execute(self) -> dict[str, Any]:
        recipe, t = self.recipe, self.recipe.trainer
        # Under torchrun: the process group (left up for later runs in this process; the command's
        # exit tears it down) and this rank's GPU.
        dist = init_distributed(t.device)
        self.verbose = self.verbose and dist.is_main
        device = resolve_device(t.device)  # a bad device fails before any data is read
        if self.resume is not None:
            self._check_resumable(read_checkpoint(self.resume))
        check_monitors(recipe)
        seed_everything(t.seed, t.deterministic)
        model = build_model(recipe.model)  # before the data: a bad model name fails in a second
        # model.init_from; a resume loads the checkpoint's weights instead
        initialised = init_model(model, recipe.model) if self.resume is None else None
        self.data = data = build_data(recipe.data, device, t.seed, overfit_batches=t.overfit_batches,
                                      channels_last=t.channels_last, rank=dist.rank, world_size=dist.world_size)
        # Only rank 0 writes: the other ranks get no run folder, hence no checkpoints and no loggers.
        self.run_dir = None if t.fast_dev_run or not dist.is_main else self._make_run_dir()
        hint = self._resume_hint()
        self.trainer = trainer = build_trainer(recipe, model, data, self.run_dir, resume_hint=hint,
                                               trainer_class=self.trainer_class, extra_callbacks=self.callbacks)
        if self.verbose:
            print(f"# resolved recipe{f' ({self.recipe_path})' if self.recipe_path else ''}\n{dump_yaml(recipe)}",
                  end="")
            print(f"# device {trainer.device}, run folder {self.run_dir or '(none: fast_dev_run)'}", flush=True)
            if initialised:
                print(f"# {initialised}", flush=True)
        if self.run_dir is not None and self.resume is None:
            (self.run_dir / "config.yaml").write_text(dump_yaml(recipe))

        started = time.perf_counter()
        try:
            trainer.fit(data.train, data.val, epochs=1 if t.fast_dev_run else t.epochs, resume_from=self.resume)
            fit_seconds = time.perf_counter() - started
            tested = self._load_best()
            if dist.world_size > 1:  # rank 0 read best.pt: every rank tests the same weights
                broadcast_tensors(_tested_tensors(trainer))
                tested = broadcast_object(tested)
            test = trainer.evaluate(data.test)
        finally:
            trainer.close()
        summary = self._summary(test, tested, fit_seconds, time.perf_counter() - started)
        if self.verbose:
            print(f"test: {_format(test)}  ({tested})", flush=True)
        if self.run_dir is not None:
            atomic_save(json.dumps(summary, indent=2).encode(), self.run_dir / "summary.json", raw=True)
            if self.verbose:
                print(f"run folder: {self.run_dir}", flush=True)
        return summary

    def _make_run_dir(self) -> Path:
        if self.run_dir is not None:  # given by the caller
            self.run_dir.mkdir(parents=True, exist_ok=True)
            return self.run_dir
        if self.resume is not None:
            # runs/<name>/<time>/checkpoints/last.pt -> continue in runs/<name>/<time>/
            return self.resume.resolve().parent.parent
        return new_run_folder(Path(self.recipe.logging.root) / run_name(self.recipe, self.recipe_path))

    def _check_resumable(self, state: dict[str, Any]) -> None:
        saved_recipe = state.get("extra", {}).get("recipe", {})
        saved = saved_recipe.get("model")
        current = self.recipe.to_dict()["model"]
        if saved is not None and saved != current:
            raise HarnessError(f"{self.resume}: the recipe's model {current} differs from the checkpoint's {saved}")
        # A per-step schedule is fitted to the run's length and its saved state wins on resume: more
        # epochs would run cosine back up past its end, or make onecycle raise in the middle of an epoch.
        schedule, epochs = self.recipe.scheduler.name, self.recipe.trainer.epochs
        saved_epochs = saved_recipe.get("trainer", {}).get("epochs", epochs)
        if schedule != "none" and schedule not in PER_EPOCH and saved_epochs != epochs:
            raise HarnessError(f"{self.resume}: trainer.epochs={epochs}, but the checkpoint's {schedule} schedule "
                               f"spans trainer.epochs={saved_epochs}; resume with trainer.epochs={saved_epochs}")

    def _resume_hint(self) -> str | None:
        if self.run_dir is None:
            return None
        # The run's config.yaml, not the recipe file: it holds the overrides too, which a resume
        # from the bare recipe would silently drop (or refuse, when they changed the model).
        recipe = self.run_dir / "config.yaml"
        return f"python -m harness.train {recipe} --resume {self.run_dir / 'checkpoints' / 'last.pt'}"

    def _load_best(self) -> str:
        """Test the best checkpoint's weights (EMA included) when there is one; say which were tested."""
        assert self.trainer is not None
        saver = next((cb for cb in self.trainer.callbacks if isinstance(cb, ModelCheckpoint)), None)
        if saver is None or not saver.best_path.is_file():
            return f"final weights, epoch {self.trainer.epoch}"
        # Weights and callback states (the EMA average) only: epoch and history stay those of the run.
        state = read_checkpoint(saver.best_path)
        unwrap_model(self.trainer.model).load_state_dict(state["model"])
        for i, callback in enumerate(self.trainer.callbacks):
            saved = state["callbacks"].get(callback_key(callback, i))
            if saved is not None:
                callback.load_state_dict(saved)
        return f"best.pt, epoch {state['epoch']}"

    def _summary(self, test: dict[str, Any], tested: str, fit_seconds: float, wall_seconds: float) -> dict[str, Any]:
        assert self.trainer is not None
        trainer, t = self.trainer, self.recipe.trainer
        history = trainer.history
        scored = [h for h in history if t.monitor in h]
        best = (max if t.mode == "max" else min)(scored, key=lambda h: h[t.monitor]) if scored else None
        import torchvision

        from harness import __version__

        return {
            "recipe": str(self.recipe_path) if self.recipe_path else None,
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "monitor": t.monitor,
            "best_epoch": best["epoch"] if best else None,
            "best_value": best[t.monitor] if best else None,
            "epochs_run": trainer.epoch,
            "final": history[-1] if history else None,
            "test": test,
            "tested_weights": tested,
            "fit_seconds": round(fit_seconds, 3),
            "wall_seconds": round(wall_seconds, 3),
            "device": str(trainer.device),
            "device_name": (torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda"
                            else platform.processor() or platform.machine()),
            "num_parameters": sum(p.numel() for p in trainer.model.parameters()),
            "versions": {"harness": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
                         "torchvision": torchvision.__version__},
        }


def run_name(recipe: Recipe, recipe_path: str | Path | None) -> str:
    """`logging.name`, else the recipe file's stem, else "run"."""
    return recipe.logging.name or (Path(recipe_path).stem if recipe_path else "run")


def new_run_folder(parent: str | Path) -> Path:
    """Create and return <parent>/<timestamp>/ (`-2`, `-3`, ... when that second is taken)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(parent) / stamp
    suffix = 1
    while folder.exists():  # two runs started in the same second get their own folders
        suffix += 1
        folder = Path(parent) / f"{stamp}-{suffix}"
    folder.mkdir(parents=True)
    return folder


def _tested_tensors(trainer: Trainer) -> list[torch.Tensor]:
    """The model's state and any callback tensors (the EMA average) that testing depends on."""
    tensors = list(unwrap_model(trainer.model).state_dict().values())
    for callback in trainer.callbacks:
        shadow = getattr(callback, "shadow", None)
        if isinstance(shadow, dict):
            tensors.extend(shadow.values())
    return tensors


def _format(metrics: dict[str, Any]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
