"""Pick a learning rate: the work of `python -m harness.lr_find`, as a Python function.

The learning-rate range test (Smith, "Cyclical Learning Rates", 2017; fastai's `lr_find`): train
from the recipe's initial weights for up to `steps` optimizer steps while the learning rate grows
exponentially from `start` to `end`, record the loss after each step, and stop early once the
smoothed loss exceeds `diverge` times the best one seen. The suggestion is the **steepest descent**
of the smoothed loss against log10(lr), looked for before the loss minimum; the curve's minimum / 10
is reported beside it. Model, optimizer, data order and RNGs are restored afterwards, bit for bit.

Files, in runs/<name>-lr_find/<timestamp>/:

    config.yaml            the resolved recipe
    lr_find.json           the (lr, loss, smoothed loss) of every step, the suggestion and how it was chosen
    lr_find.png            loss against learning rate (log scale), the suggestion marked
    events.out.tfevents.*  TensorBoard: lr_find/{loss,smoothed_loss,lr} per step and the figure

`find_lr(trainer, train_data)` is the same sweep from Python, on any Trainer.
"""

from __future__ import annotations

import copy
import math
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.core.device import move_to_device
from harness.core.figures import figure_to_array, save_figure
from harness.core.loggers import TensorBoardLogger
from harness.core.seed import get_rng_state, set_rng_state
from harness.core.trainer import Trainer
from harness.errors import HarnessError
from harness.recipe.parts import build_training, setup
from harness.recipe.run_folder import check_run_parent, command_folder, write_config, write_json
from harness.recipe.schema import Recipe

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SUGGESTION_RULE = ("steepest descent: the lr where the smoothed loss falls fastest against log10(lr), "
                   "before the smoothed loss's minimum")



@dataclass
class LRFindResult:
    """What the sweep saw: one entry per optimizer step taken."""

    lrs: list[float]  # learning rate of each step
    losses: list[float]  # the batch's training loss at that step (before the update)
    smoothed: list[float]  # bias-corrected exponential moving average of `losses`
    suggestion: float | None  # steepest descent of the smoothed loss (None: too few points)
    min_loss_lr: float  # learning rate at the smoothed loss's minimum
    stopped_early: bool  # the loss diverged before `steps`

    @property
    def min_over_10(self) -> float:
        """The other common rule: the learning rate at the loss minimum, divided by 10."""
        return self.min_loss_lr / 10


def find_lr(trainer: Trainer, train_data: Iterable[Any], *, start_lr: float = 1e-7, end_lr: float = 10.0,
            steps: int = 200, smoothing: float = 0.9, diverge: float = 4.0) -> LRFindResult:
    """Sweep the learning rate of `trainer.optimizer` exponentially from `start_lr` to `end_lr`.

    The swept value is the first parameter group's learning rate; other groups keep their ratio to
    it. Each step is the step training takes: `trainer.accumulate_grad_batches` (N) batches, each through
    the Trainer's own `training_step` (so a subclass's loss is what is measured) under its autocast,
    their gradients averaged, then the optimizer step; so the suggestion is for the effective batch
    (N times the batch size) that training steps with. The recorded loss is the group's mean. Grad
    clipping and the scheduler are not applied. `train_data` is cycled if it has fewer than `steps * N`
    batches. The sweep stops when the smoothed loss exceeds `diverge` times its best value or becomes NaN/inf.

    `smoothing` is the moving average's decay: 0.9 averages over ~10 steps, 0.4 of a decade of lr
    at the default 200 steps over 8 decades. (fastai's 0.98 lags ~2 decades here: on the MNIST MLP
    it put the loss minimum at 4.7e-2 instead of 2.0e-2 and never saw the divergence.)

    Afterwards the model's weights and buffers, the optimizer's state and learning rates, the AMP
    scaler, the loader's `state_dict` (when it has one; `fit` sets the epoch anyway) and every RNG
    are exactly what they were before the call.
    """
    _check_range(start_lr, end_lr, steps)
    model, optimizer = trainer.model, trainer.optimizer
    saved = {
        # deepcopy: state_dict() returns references to the live tensors the sweep will change
        "model": copy.deepcopy(model.state_dict()),
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "training": model.training,
        "scaler": copy.deepcopy(trainer.scaler.state_dict()) if trainer.scaler is not None else None,
        "data": train_data.state_dict() if hasattr(train_data, "state_dict") else None,
        "rng": get_rng_state(),  # dropout draws: the run after the sweep draws what it would have
    }
    ratio = (end_lr / start_lr) ** (1 / (steps - 1))  # lr multiplier per step
    # The swept lr is the first group's; other groups (optim.param_groups) keep their ratio to it.
    base = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
    scales = [lr / base[0] for lr in base]
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, best, stopped_early = 0.0, math.inf, False
    accumulate = trainer.accumulate_grad_batches
    model.train()
    optimizer.zero_grad(set_to_none=True)
    try:
        for step, group_batches in enumerate(_groups(_cycle(train_data, steps * accumulate), accumulate)):
            lr = start_lr * ratio**step
            for group, scale in zip(optimizer.param_groups, scales, strict=True):
                group["lr"] = lr * scale
            loss = trainer.train_step(*(move_to_device(batch, trainer.device) for batch in group_batches))
            # note: a host sync every step; the divergence test needs the value now
            value = loss.item()
            average = smoothing * average + (1 - smoothing) * value
            smooth = average / (1 - smoothing ** (step + 1))  # bias correction, as in Adam
            lrs.append(lr)
            losses.append(value)
            smoothed.append(smooth)
            if not math.isfinite(smooth) or smooth > diverge * best:
                stopped_early = step + 1 < steps
                break
            best = min(best, smooth)
    finally:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        model.train(saved["training"])
        if trainer.scaler is not None:
            trainer.scaler.load_state_dict(saved["scaler"])
        if saved["data"] is not None:
            train_data.load_state_dict(saved["data"])
        set_rng_state(saved["rng"])
    if not lrs:
        raise HarnessError("lr_find: the training data gave no batches")
    return LRFindResult(lrs, losses, smoothed, *_suggest(lrs, smoothed), stopped_early=stopped_early)


def _check_range(start_lr: float, end_lr: float, steps: int) -> None:
    if not (math.isfinite(start_lr) and math.isfinite(end_lr)):
        raise HarnessError(f"lr_find: --start and --end must be finite numbers, got start={start_lr}, end={end_lr}")
    if not 0 < start_lr < end_lr:
        raise HarnessError(f"lr_find: need 0 < start < end, got start={start_lr}, end={end_lr}")
    if steps < 2:
        raise HarnessError(f"lr_find: --steps must be at least 2, got {steps}")


def _cycle(data: Iterable[Any], steps: int) -> Iterable[Any]:
    """`steps` batches, passing over `data` as many times as needed (a new epoch order each pass)."""
    taken, epoch = 0, 0
    while taken < steps:
        if hasattr(data, "set_epoch"):
            data.set_epoch(epoch)
        before = taken
        for batch in data:
            yield batch
            taken += 1
            if taken == steps:
                return
        if taken == before:  # empty
            return
        epoch += 1


def _groups(batches: Iterable[Any], size: int) -> Iterable[list[Any]]:
    """Consecutive groups of `size` batches: one optimizer step each. A short last group is dropped: its
    step would average fewer batches than the others."""
    group: list[Any] = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []


def _suggest(lrs: list[float], smoothed: list[float]) -> tuple[float | None, float]:
    """(steepest-descent lr, lr at the minimum of the smoothed loss), ignoring a diverged last point."""
    loss = np.asarray(smoothed, dtype=np.float64)
    finite = np.isfinite(loss)
    if not finite.any():
        return None, lrs[0]
    lowest = int(np.nanargmin(np.where(finite, loss, np.nan)))
    if lowest < 2:  # nothing descends before the minimum
        return None, lrs[lowest]
    slope = np.gradient(loss[: lowest + 1], np.log10(lrs[: lowest + 1]))
    return lrs[int(np.argmin(slope))], lrs[lowest]


def lr_find_figure(result: LRFindResult, title: str = "learning-rate range test") -> Figure:
    """Loss (raw, faint, and smoothed) against the learning rate on a log axis; the suggestion marked."""
    from matplotlib.figure import Figure  # noqa: PLC0415  (matplotlib: only when drawing; Agg canvas, no pyplot)

    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="batch loss")
    ax.plot(result.lrs, result.smoothed, color="tab:blue", linewidth=1.8, label="smoothed loss")
    if result.suggestion is not None:
        ax.axvline(result.suggestion, color="tab:red", linestyle="--",
                   label=f"suggestion (steepest) {result.suggestion:.2e}")
    ax.axvline(result.min_over_10, color="tab:green", linestyle=":", label=f"min / 10 {result.min_over_10:.2e}")
    ax.set_xscale("log")
    finite = [v for v in result.smoothed if math.isfinite(v)]
    if finite:  # from the lowest loss to a little above the first: the diverged tail would flatten the rest
        span = max(finite[0] - min(finite), 1e-6)
        ax.set_ylim(min(finite) - 0.1 * span, finite[0] + 0.3 * span)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def lr_find(recipe: Recipe, recipe_path: str | Path | None = None, *, start_lr: float = 1e-7,
            end_lr: float = 10.0, steps: int = 200, overrides: Sequence[str] = (), write: bool = True,
            verbose: bool = True) -> dict[str, Any]:
    """Build the recipe's model, optimizer and training data, run `find_lr`, write the run folder.

    `overrides`: the dotted overrides the recipe was loaded with; the printed `try:` command repeats
    them (an `optim.lr` among them is replaced by the suggestion). Each step takes
    `trainer.accumulate_grad_batches` batches, as training does.

    Returns the JSON written to lr_find.json (plus "run_dir" when `write`)."""
    _check_range(start_lr, end_lr, steps)  # before any data is read
    if write:
        check_run_parent(recipe, recipe_path, "lr_find")  # the folder itself is made after the sweep
    # The parts training would use, model.init_from included: the sweep starts from the same weights.
    parts = build_training(recipe, setup(recipe), run_dir=None)
    result = find_lr(parts.trainer, parts.data.train, start_lr=start_lr, end_lr=end_lr, steps=steps)
    report: dict[str, Any] = {
        "recipe": str(recipe_path) if recipe_path else None,
        "optimizer": recipe.optim.name,
        "recipe_lr": recipe.optim.lr,
        "start_lr": start_lr, "end_lr": end_lr, "steps_asked": steps, "batch_size": recipe.data.batch_size,
        "accumulate_grad_batches": recipe.trainer.accumulate_grad_batches,
        "effective_batch_size": recipe.data.batch_size * recipe.trainer.accumulate_grad_batches,
        "overrides": list(overrides),
        **asdict(result),
        "suggestion_rule": SUGGESTION_RULE,
        "min_over_10": result.min_over_10,
        "points": [{"lr": lr, "loss": loss, "smoothed_loss": s}
                   for lr, loss, s in zip(result.lrs, result.losses, result.smoothed, strict=True)],
    }
    for key in ("lrs", "losses", "smoothed"):  # the same numbers as "points"
        del report[key]
    if write:
        run_dir = command_folder(recipe, recipe_path, "lr_find")
        report["run_dir"] = str(run_dir)
        _write_outputs(run_dir, recipe, result, report)
    if verbose:
        print(format_lr_find(report), flush=True)
    return report


def _write_outputs(run_dir: Path, recipe: Recipe, result: LRFindResult, report: dict[str, Any]) -> None:
    write_config(run_dir, recipe)
    figure = lr_find_figure(result, title=f"lr_find: {recipe.model.name}, {recipe.optim.name}, "
                                          f"batch {_batch_words(report)}")
    save_figure(figure, run_dir / "lr_find.png")
    write_json(run_dir / "lr_find.json", report)
    if recipe.logging.tensorboard:
        writer = TensorBoardLogger(run_dir)
        try:
            for step, (lr, loss, smooth) in enumerate(zip(result.lrs, result.losses, result.smoothed, strict=True)):
                writer.log({"lr_find/lr": lr, "lr_find/loss": loss, "lr_find/smoothed_loss": smooth}, step)
            writer.image("lr_find/curve", figure_to_array(figure), 0)
        finally:
            writer.close()


def format_lr_find(report: dict[str, Any]) -> str:
    points = report["points"]
    stop = "stopped early: the loss diverged" if report["stopped_early"] else "ran every step"
    suggestion = report["suggestion"]
    lines = [f"# lr_find: {len(points)} steps from lr {points[0]['lr']:.2e} to {points[-1]['lr']:.2e} ({stop}); "
             f"each step: batch {_batch_words(report)}",
             f"lowest smoothed loss {min(p['smoothed_loss'] for p in points):.4f} at lr {report['min_loss_lr']:.2e}"]
    if suggestion is None:
        lines.append("no suggestion: the loss did not fall before its minimum; widen --start/--end")
    else:
        lines.append(f"suggested lr {suggestion:.2e} ({report['suggestion_rule']}); "
                     f"min/10 would give {report['min_over_10']:.2e}; the recipe has optim.lr={report['recipe_lr']:g}")
        lines.append(f"try: {try_command(report['recipe'], report['overrides'], suggestion)}")
    if "run_dir" in report:
        lines.append(f"wrote {report['run_dir']}/lr_find.png, lr_find.json and TensorBoard events")
    return "\n".join(lines)


def _batch_words(report: dict[str, Any]) -> str:
    n = report["accumulate_grad_batches"]
    return str(report["batch_size"]) if n == 1 else \
        f"{report['effective_batch_size']} ({n} accumulated batches of {report['batch_size']})"


def try_command(recipe_path: str | None, overrides: Sequence[str], lr: float) -> str:
    """The training command with the user's overrides and the suggested learning rate, quoted for a shell."""
    kept = [o for o in overrides if not o.replace(" ", "").startswith("optim.lr=")]
    words = ["python", "-m", "harness.train", recipe_path or "RECIPE", *kept, f"optim.lr={lr:.2g}"]
    return " ".join(shlex.quote(w) for w in words)
