"""The one entry every command uses to get its parts from a recipe.

`setup(recipe)` runs once per command before any data is read: the process group under torchrun,
the device (resolved here and passed down, never re-read from the recipe), the precision check and
the seeds. Then `build_training(...)` gives the model, the data and the training Trainer, and
`build_evaluation(...)` the model with a checkpoint's weights, the split to score and a Trainer built
for scoring (no optimizer, no DDP wrapper, the whole split, the report's metrics).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.core.callbacks import Callback
from harness.core.device import check_precision, resolve_device
from harness.core.distributed import DistInfo, init_distributed
from harness.core.seed import seed_everything, seed_rank
from harness.core.trainer import Trainer
from harness.errors import HarnessError
from harness.recipe.build import (
    build_evaluator,
    build_model,
    build_trainer,
    check_model_fits_data,
    check_monitors,
    check_sample,
    check_step_settings,
    model_class,
)
from harness.recipe.classes import check_classes
from harness.recipe.data import TOKEN_SOURCES, Data, build_data
from harness.recipe.schema import MetricConfig, Recipe
from harness.recipe.strategy import strategy_blocks
from harness.recipe.weights import check_same_data, check_vocabulary, init_model, load_checkpoint_model

SPLITS = ("test", "val")


@dataclass(frozen=True)
class Setup:
    """This process's rank information and its device, decided once per command."""

    dist: DistInfo
    device: torch.device


def setup(recipe: Recipe, device: str | None = None) -> Setup:
    """Start the process group (under torchrun), resolve the device, check the precision, seed.

    `device` overrides `trainer.device` (compress scores on the CPU whatever the recipe says).
    A bad device or precision fails here, before any file is read (under torchrun `cuda:N` too: each rank
    takes the GPU of its LOCAL_RANK). `trainer.threads` is applied first, so every op of the command runs
    with it. Every rank seeds with `trainer.seed` (the model's initial weights are the same everywhere);
    `build_training` gives each rank its own stream once the model is built. Deterministic mode is set
    on or off as the recipe says, whatever a run before it in this process left.
    """
    t = recipe.trainer
    if t.threads is not None:
        # On a shared CPU, fewer threads than torch's default can be far faster: threads waiting on
        # each other at OpenMP barriers while other jobs hold the cores.
        torch.set_num_threads(t.threads)
    wanted = device or t.device
    dist = init_distributed(wanted)
    resolved = resolve_device(wanted)
    try:
        check_precision(t.precision, resolved)
    except ValueError as e:
        raise HarnessError(f"trainer.precision: {e}") from None
    seed_everything(t.seed, t.deterministic)
    return Setup(dist, resolved)


@dataclass
class Training:
    model: nn.Module
    data: Data
    trainer: Trainer
    initialised: str | None  # what model.init_from loaded, when it did


def build_training(recipe: Recipe, env: Setup, run_dir: Path | None, *, resuming: bool = False,
                   resume_hint: str | None = None, trainer_class: type[Trainer] = Trainer,
                   callbacks: Sequence[Callback] = (), checkpoints: bool = True,
                   indices: tuple[torch.Tensor, torch.Tensor] | None = None,
                   shared_run_dir: Path | None = None) -> Training:
    """The model (before the data: a bad model name fails in a second), its `model.init_from` weights
    unless resuming (a resume loads the checkpoint's), this rank's data, and the Trainer. A model sized by
    the data's vocabulary (text: characters, words) is built after the data, once that vocabulary is known.

    `indices`: explicit (train, val) indices into the training split (cross-validation folds).
    With `trainer.compile`, Dynamo's caches are reset first: the runs of one process (sweep trials, compared
    models, folds) each compile their own model instead of reaching Dynamo's recompile limit and silently
    running eagerly. Under torchrun each rank is then reseeded from `(trainer.seed, rank)`
    (`harness.core.seed.seed_rank`): ranks draw different dropout masks, the same ones on every run.
    `shared_run_dir`: see `build_trainer` (the other ranks' view of rank 0's run folder, under FSDP)."""
    t = recipe.trainer
    check_monitors(recipe, validates=True if indices is not None else None)  # a fold validates on its held-out fold
    check_classes(recipe.optim, recipe.loss, recipe.scheduler)  # unknown names and keywords: before the data
    check_step_settings(recipe)
    if t.compile:
        torch._dynamo.reset()
    # An unknown model name, and logging.sample without text data or a model that generates: before the data
    check_sample(recipe, model_class(recipe.model))

    def model_and_weights(vocab_size: int | None) -> tuple[nn.Module, str | None]:
        model = build_model(recipe.model, vocab_size=vocab_size)
        strategy_blocks(recipe, model)  # class names the model does not have
        return model, None if resuming else init_model(model, recipe.model)

    # Text is token ids: the embedding is sized from the data's vocabulary, so that model waits for the data.
    # Any other model is built first: a bad model.args fails before the data is read.
    model, initialised = (None, None) if recipe.data.name in TOKEN_SOURCES else model_and_weights(None)
    data = build_data(recipe.data, env.device, t.seed, overfit_batches=t.overfit_batches,
                      channels_last=t.channels_last, rank=env.dist.rank, world_size=env.dist.world_size,
                      indices=indices)
    if model is None:
        model, initialised = model_and_weights(None if data.vocabulary is None else len(data.vocabulary))
    trainer = build_trainer(recipe, model, data, run_dir, env.device, extra_callbacks=callbacks,
                            resume_hint=resume_hint, trainer_class=trainer_class, checkpoints=checkpoints,
                            shared_run_dir=shared_run_dir)
    check_model_fits_data(recipe, trainer, data)
    if env.dist.world_size > 1:  # after the model is built: its initial weights are the same on every rank
        seed_rank(t.seed, env.dist.rank)
    return Training(model, data, trainer, initialised)


@dataclass
class Evaluation:
    model: nn.Module  # the checkpoint's weights (raw or EMA), in eval mode
    state: dict[str, Any]  # the checkpoint as read
    weights: str  # words saying which weights were loaded
    data: Data
    loader: Iterable[Any]  # the split to score, this rank's shard of it under torchrun
    evaluator: Trainer  # scores only: no optimizer, whole splits


def build_evaluation(recipe: Recipe, env: Setup, checkpoint: str | Path, split: str,
                     metrics: Callable[[int], dict[str, MetricConfig]],
                     trainer_class: type[Trainer] = Trainer) -> Evaluation:
    """What scoring `checkpoint` on the recipe's `split` needs; `metrics(num_classes)` names the metrics,
    `trainer_class` the Trainer (sub)class that scores.

    Refuses (HarnessError) a checkpoint of another model or data set, and a val split that would
    hold images the checkpoint was trained on."""
    if split not in SPLITS:
        raise HarnessError(f"split {split!r}: allowed are {', '.join(SPLITS)}")
    checkpoint = Path(checkpoint)
    model, state, weights = load_checkpoint_model(recipe, checkpoint)
    check_same_data(state, recipe, split, checkpoint)
    t = recipe.trainer
    data = build_data(recipe.data, env.device, t.seed, channels_last=t.channels_last,
                      rank=env.dist.rank, world_size=env.dist.world_size)
    check_vocabulary(state, data.vocabulary, checkpoint)
    loader = data.test if split == "test" else data.val
    if loader is None:
        raise HarnessError("--split val: the recipe holds out no validation images (data.val_size is 0)")
    evaluator = build_evaluator(recipe, model, env.device, metrics(data.num_classes), data.num_classes,
                                trainer_class)
    return Evaluation(evaluator.model, state, weights, data, loader, evaluator)
