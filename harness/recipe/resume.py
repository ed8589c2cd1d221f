"""The resume contract: which recipe keys may differ from the checkpoint's, and where the run goes on.

A resumed run continues the checkpoint's training exactly. A key the checkpoint's state overrides
(the optimizer's learning rate and betas, the schedule, the weights) or that would change what the
run computes (the data split, the batch size, the seed, the precision) would be silently ignored or
would break the exact resume, so a different value is refused with one line. The keys in
`MAY_CHANGE` are applied, and the run's config.yaml is rewritten with them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.recipe.run_folder import checkpoint_dir
from harness.recipe.schedules import FITTED_TO_RUN
from harness.recipe.schema import Recipe, flat_keys

# Dotted keys (and every key under them) that a resume may change: they are read from the recipe
# when the run is rebuilt and nothing in the checkpoint overrides them.
MAY_CHANGE = (
    "trainer.epochs",  # train longer or shorter (not with a per-step schedule: see check_resume)
    "trainer.max_steps",  # the same for a step-based run
    "trainer.throughput",  # what is measured, not what is trained
    "trainer.device", "trainer.deterministic", "trainer.compile", "trainer.channels_last", "trainer.sync_batchnorm",
    "trainer.grad_clip_norm", "trainer.grad_clip_value", "trainer.on_nonfinite", "trainer.max_nonfinite_skips",
    # an early stopping or EMA already in the run may be tuned; adding or removing one would renumber
    # the callbacks whose states the checkpoint holds
    "trainer.early_stopping.patience", "trainer.early_stopping.min_delta", "trainer.ema.decay",
    "trainer.limit_val_batches", "trainer.limit_test_batches", "trainer.log_every_n_steps", "trainer.progress",
    "trainer.threads",  # CPU threads: the speed of the run (sums may round differently), not its settings
    "metrics", "logging.tensorboard", "logging.sample",
    "data.root", "data.download", "data.num_workers", "data.pin_memory", "data.persistent_workers",
    "data.eval_batch_size",
    # how the model is laid out over the ranks, not what it computes (the strategy itself stays: it
    # decides the checkpoints' format)
    "trainer.fsdp", "trainer.activation_checkpointing",
)


_UNSET = object()


def _show(value: Any) -> str:
    return "unset" if value is _UNSET else repr(value)


def _may_change(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in MAY_CHANGE)


def check_resume(state: dict[str, Any], recipe: Recipe, checkpoint: Path, world_size: int = 1) -> None:
    """Refuse a recipe that differs from the checkpoint's in a key outside `MAY_CHANGE` (one line
    naming every such key with both values), more or fewer epochs under a per-step schedule, and a
    global batch (`data.batch_size` per process x processes) other than the checkpoint's.

    `data.batch_size` may change when the number of processes (`world_size`) does, as long as the
    global batch stays: saved by 2 processes of 16, resumed by 1 of 32 or by 4 of 8."""
    saved_recipe = state.get("extra", {}).get("recipe")
    if saved_recipe is None:  # saved from Python without a recipe: nothing to compare
        return
    saved, current = flat_keys(saved_recipe), flat_keys(recipe.to_dict())
    saved_world = int(state.get("world_size", world_size))
    if saved_world != world_size:  # data.batch_size is per process: compare global batches instead
        _check_global_batch(saved["data.batch_size"], saved_world, current["data.batch_size"], world_size, checkpoint)
        saved["data.batch_size"] = current["data.batch_size"]
    defaults = flat_keys(Recipe().to_dict())
    changed = []
    for key in sorted(set(saved) | set(current)):
        was, now = saved.get(key, _UNSET), current.get(key, _UNSET)
        if was is _UNSET and now == defaults.get(key, _UNSET):
            continue  # a key the schema gained after the checkpoint was written, at its default
        if was != now and not _may_change(key):
            changed.append(f"{key} ({_show(was)} -> {_show(now)})")
    if changed:
        raise HarnessError(
            f"{checkpoint}: a resume continues the checkpoint's run and cannot change {', '.join(changed)}; "
            f"to train these weights with other settings, start a new run with model.init_from={checkpoint}")
    # A per-step schedule is fitted to the run's length and its saved state wins on resume: more
    # epochs would run cosine back up past its end, or make onecycle raise in the middle of an epoch.
    schedule = recipe.scheduler.name
    for key in ("epochs", "max_steps"):
        now = getattr(recipe.trainer, key)
        was = saved_recipe.get("trainer", {}).get(key, now)
        # every schedule of a step-based run follows its max_steps; by epochs, cosine and onecycle do
        fitted = schedule in FITTED_TO_RUN or (key == "max_steps" and schedule != "none")
        if fitted and was != now:
            raise HarnessError(f"{checkpoint}: trainer.{key}={now}, but the checkpoint's {schedule} schedule "
                               f"spans trainer.{key}={was}; resume with trainer.{key}={was}")


def _check_global_batch(saved_batch: int, saved_world: int, batch: int, world: int, checkpoint: Path) -> None:
    """The samples of an optimizer step, and so the run's loss curve, stay the checkpoint's."""
    if saved_batch * saved_world == batch * world:
        return
    fits = saved_batch * saved_world / world
    hint = (f"with {world} process{'es' * (world > 1)} set data.batch_size={int(fits)}" if fits == int(fits)
            else f"{world} processes cannot split it evenly")
    raise HarnessError(f"{checkpoint}: trained with a global batch of {saved_batch * saved_world} (data.batch_size="
                       f"{saved_batch} x {saved_world} process{'es' * (saved_world > 1)}); a resume keeps it: {hint}")


def recorded_run_folder(state: dict[str, Any], checkpoint: Path) -> Path | None:
    """The run folder the checkpoint was written in, when the checkpoint still lies in it.

    The folder is recorded in the checkpoint, never guessed from the path: a copy elsewhere (say
    ~/downloads/last.pt) would otherwise make its parent's parent a run folder and overwrite files
    there. None: the checkpoint lies outside its run folder (or records none), so the resume starts
    a new run folder.
    """
    recorded = state.get("extra", {}).get("run_dir")
    if not recorded:
        return None
    folder = Path(recorded)
    inside = checkpoint.resolve().parent == checkpoint_dir(folder).resolve()
    return folder if inside and folder.is_dir() else None
