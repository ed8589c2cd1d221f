"""Compare models on the same data: the work of `python -m harness.compare`, as a Python function.

Compare models on the same data: each recipe is trained (`harness.workflows.training.Run`) with the same `--set`
overrides, the same seed and so the same train / validation split, or a given checkpoint is used
as it is; then every model is scored on the same test set by `harness.workflows.evaluation.evaluate` (the accuracy and
macro-F1 in the table are exactly `evaluate`'s figures for that checkpoint) and measured:

- parameters; FLOPs per sample: `torch.utils.flop_counter.FlopCounterMode` over one forward pass of
  a batch of 1 (matmuls and convolutions, 2 FLOPs per multiply-add; elementwise ops not counted);
- train seconds (`fit`, validation included) and peak memory while training: on CUDA
  `torch.cuda.max_memory_allocated` (tensors only); on CPU the process's peak resident set size,
  `resource.getrusage(...).ru_maxrss`, whose high-water mark is reset before each model on Linux
  (`/proc/self/clear_refs`), so it is that model's peak, Python, torch and the dataset included;
- inference with `harness.core.speed.measure_inference`: latency p50 / p95 at batch 1, samples/s at
  `data.eval_batch_size`; measured once per model (the first seed): speed does not depend on the seed.

`--seeds 0,1,2` trains each recipe once per seed and reports mean ± sample std (ddof=1).

    runs/compare/<time>/
        compare.md       the table and what each column means
        compare.csv      one row per model and seed (params, FLOPs, speed: in its first row only)
        <model>-seed<s>/ each training run's folder (config.yaml, summary.json, checkpoints),
                         with a TensorBoard hparams entry: `tensorboard --logdir runs/compare/<time>`

`compare(recipe_paths, ...)` is the same thing from Python and returns that data.
"""

from __future__ import annotations

import csv
import math
import resource
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from harness.core.loggers import TensorBoardLogger
from harness.errors import HarnessError
from harness.metrics.report import format_table, mean_std
from harness.recipe.build import build_model, check_monitors
from harness.recipe.data import build_data
from harness.recipe.parts import setup
from harness.recipe.run_folder import best_checkpoint, last_checkpoint, new_run_folder, run_name
from harness.recipe.schema import load_recipe
from harness.workflows.evaluation import evaluate
from harness.workflows.training import Run

COLUMNS = {  # csv field -> table heading
    "test_acc": "test acc",
    "test_macro_f1": "macro-F1",
    "params": "params",
    "flops_per_sample": "FLOPs/sample",
    "train_seconds": "train s",
    "infer_samples_per_s": "infer samples/s",
    "latency_p50_ms": "p50 ms",
    "latency_p95_ms": "p95 ms",
    "peak_mem_mb": "peak mem MB",
}


MEASURED_ONCE = ("params", "flops_per_sample", "infer_batch", "infer_samples_per_s", "latency_p50_ms",
                 "latency_p95_ms")


def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one forward pass of `example` (eval mode, no grad), by `FlopCounterMode`."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def compare(recipe_paths: Sequence[str | Path], overrides: Sequence[str] = (), *, seeds: Sequence[int] | None = None,
            checkpoints: Mapping[str, str | Path] | None = None) -> dict[str, Any]:
    """Train (or load) and score each recipe's model on the same split and test set; returns plain data.

    `overrides` apply to every recipe; `seeds` (default: the first recipe's `trainer.seed`) replace
    `trainer.seed` in all of them; `checkpoints` maps a model label (the recipe file's stem, or
    `logging.name`) to a checkpoint to score instead of training that recipe.

    Returns {"compare_dir", "seeds", "device", "memory", "models": [one dict per model: label,
    recipe, seeds, and per column its mean and std], "runs": [one dict per model and seed]}.
    """
    if not recipe_paths:
        raise HarnessError("give at least one recipe to compare")
    first = load_recipe(recipe_paths[0], list(overrides))
    seeds = [first.trainer.seed] if seeds is None else list(seeds)
    if not seeds:
        raise HarnessError("--seeds: give at least one seed, e.g. --seeds 0,1,2")
    labels = _labels([load_recipe(p, list(overrides)) for p in recipe_paths], recipe_paths)
    checkpoints = {k: Path(v) for k, v in (checkpoints or {}).items()}
    unknown = sorted(set(checkpoints) - set(labels))
    if unknown:
        raise HarnessError(f"--checkpoint {unknown[0]}=...: no such model; the models are {', '.join(labels)}")
    # Every recipe of every seed is validated, and must read the same data, before anything trains.
    recipes = {(label, seed): load_recipe(path, [*overrides, f"trainer.seed={seed}"])
               for label, path in zip(labels, recipe_paths, strict=True) for seed in seeds}
    for (label, _), recipe in recipes.items():
        check_monitors(recipe)
        if recipe.trainer.fast_dev_run and label not in checkpoints:
            raise HarnessError("trainer.fast_dev_run writes no checkpoint to compare; for a quick comparison "
                               "use a small budget, e.g. --set trainer.epochs=1 --set trainer.limit_train_batches=20")
        for key in ("name", "val_size"):
            if getattr(recipe.data, key) != getattr(first.data, key) and label not in checkpoints:
                raise HarnessError(f"{label}: data.{key}={getattr(recipe.data, key)!r} differs from "
                                   f"{labels[0]}'s {getattr(first.data, key)!r}; models must be compared on the same "
                                   f"data: add --set data.{key}=...")

    device = setup(first).device
    compare_dir = new_run_folder(Path(first.logging.root) / "compare")
    print(f"compare: {', '.join(labels)} on the {first.data.name} test split, seeds {seeds}; folder {compare_dir}",
          flush=True)
    # One real input for the FLOP count: shape, dtype and layout exactly as the models see them.
    example = next(iter(build_data(first.data, device, seeds[0]).test))[0][:1]
    jobs = [(label, path, seed) for label, path in zip(labels, recipe_paths, strict=True)
            for seed in ([None] if label in checkpoints else seeds)]
    runs: list[dict[str, Any]] = []
    writer = _writer(compare_dir) if first.logging.tensorboard else None
    bar = tqdm(total=len(jobs), desc="models", unit="run", disable=not (first.trainer.progress and sys.stderr.isatty()))
    try:
        for label, path, seed in jobs:
            recipe = recipes[(label, seeds[0] if seed is None else seed)]
            measured = [r for r in runs if r["model"] == label]
            row: dict[str, Any] = {"model": label, "recipe": str(path), "seed": seed}
            if seed is None:  # a given checkpoint: scored as it is
                checkpoint, run_dir = checkpoints[label], None
                row.update(train_seconds=None, peak_mem_mb=None)
            else:
                run_dir = compare_dir / f"{label}-seed{seed}"
                exact = _reset_peak_memory(device)
                summary = Run(recipe, path, run_dir=run_dir, verbose=False).execute()
                row.update(train_seconds=summary["fit_seconds"], peak_mem_mb=_peak_memory_mb(device) if exact else None)
                best = best_checkpoint(run_dir)
                checkpoint = best if best.is_file() else last_checkpoint(run_dir)
            scores = evaluate(recipe, checkpoint, "test", speed=not measured, write=False, verbose=False)
            row.update(checkpoint=str(checkpoint), test_acc=scores["accuracy"],
                       test_macro_f1=scores["averages"]["macro"]["f1"], test_loss=scores["loss"])
            if measured:  # architecture and speed figures: measured once per model, with its first seed
                row.update(dict.fromkeys(MEASURED_ONCE))
            else:
                speed = scores["speed"]
                one, big = speed["batches"][0], speed["batches"][-1]  # batch 1, data.eval_batch_size
                fresh = build_model(recipe.model).to(example.device)  # FLOPs do not depend on the weights
                row.update(params=speed["num_parameters"], flops_per_sample=count_flops(fresh, example),
                           infer_batch=big["batch_size"], infer_samples_per_s=big["throughput_samples_per_s"],
                           latency_p50_ms=one["latency_ms"]["p50"], latency_p95_ms=one["latency_ms"]["p95"])
            row["run_dir"] = str(run_dir) if run_dir is not None else None
            runs.append(row)
            if writer is not None:
                _add_hparams(writer, row, run_dir.name if run_dir is not None else f"{label}-checkpoint")
            bar.write(f"{label}" + (f" seed {seed}" if seed is not None else f" ({checkpoint})")
                      + f": test acc {row['test_acc']:.4f}  macro-F1 {row['test_macro_f1']:.4f}", file=sys.stdout)
            bar.update()
    finally:
        bar.close()
        if writer is not None:
            writer.close()

    models = [_aggregate(label, [r for r in runs if r["model"] == label]) for label in labels]
    memory = ("torch.cuda.max_memory_allocated while training (tensors only)" if device.type == "cuda" else
              "process peak RSS while training (resource.getrusage ru_maxrss, reset per model via "
              "/proc/self/clear_refs; includes Python, torch and the dataset)")
    result = {"compare_dir": str(compare_dir), "seeds": seeds, "device": str(device), "memory": memory,
              "models": models, "runs": runs}
    table = format_compare(result)
    print(table, flush=True)
    _write_csv(compare_dir / "compare.csv", runs)
    (compare_dir / "compare.md").write_text(format_compare(result, markdown=True) + "\n")
    print(f"compare folder: {compare_dir}  (compare.md, compare.csv; tensorboard --logdir {compare_dir})", flush=True)
    return result


def format_compare(result: dict[str, Any], markdown: bool = False) -> str:
    """The table (one row per model; mean ± sample std over seeds) and the notes on its columns."""
    digits = {"test_acc": 4, "test_macro_f1": 4, "train_seconds": 1, "infer_samples_per_s": 0,
              "latency_p50_ms": 3, "latency_p95_ms": 3, "peak_mem_mb": 0}
    rows = []
    for model in result["models"]:
        cells = [model["label"]]
        for key in COLUMNS:
            mean, std = model[key]
            if mean is None:
                cells.append("-")
            elif key in ("params", "flops_per_sample"):
                cells.append(f"{mean:,.0f}")
            else:
                d = digits[key]
                cells.append(f"{mean:,.{d}f}" + (f" ± {std:,.{d}f}" if not math.isnan(std) else ""))
        rows.append(cells)
    table = format_table(["model", *COLUMNS.values()], rows, markdown=markdown)
    batch = next((r["infer_batch"] for r in result["runs"] if r["infer_batch"] is not None), "-")
    notes = [
        f"seeds {result['seeds']}; ± is the sample std (ddof=1) over seeds" if len(result["seeds"]) > 1
        else f"seed {result['seeds'][0]}",
        "test acc / macro-F1: harness.evaluate on the test split (best.pt, else last.pt)",
        "FLOPs/sample: FlopCounterMode, one forward pass of a batch of 1 (matmul/conv; 2 per multiply-add)",
        f"infer samples/s at batch {batch}; latency p50 / p95 at batch 1 (harness.core.speed, on {result['device']})",
        f"peak mem: {result['memory']}",
    ]
    if markdown:
        return "# compare\n\n" + table + "\n\n" + "\n".join(f"- {n}" for n in notes)
    return table + "\n" + "\n".join(f"# {n}" for n in notes)


def _labels(recipes: list[Any], paths: Sequence[str | Path]) -> list[str]:
    """Each model's name: `logging.name`, else the recipe file's stem; a repeated name gets -2, -3, ..."""
    labels: list[str] = []
    for recipe, path in zip(recipes, paths, strict=True):
        label, n = run_name(recipe, path), 1
        while label in labels:
            n += 1
            label = f"{run_name(recipe, path)}-{n}"
        labels.append(label)
    return labels


def _aggregate(label: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    model: dict[str, Any] = {"label": label, "recipe": runs[0]["recipe"], "seeds": [r["seed"] for r in runs]}
    for key in COLUMNS:
        values = [r[key] for r in runs if r[key] is not None]
        model[key] = mean_std(values) if values else (None, math.nan)
    return model


def _reset_peak_memory(device: torch.device) -> bool:
    """Start a fresh peak-memory count; False when this platform cannot (the figure is then left out)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:  # Linux: writing 5 resets the process's RSS high-water mark (what ru_maxrss reports)
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e6
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # KiB on Linux


def _writer(folder: Path) -> TensorBoardLogger:
    return TensorBoardLogger(folder)


def _add_hparams(writer: TensorBoardLogger, row: dict[str, Any], run_name: str) -> None:
    hparams = {"model": row["model"], "recipe": row["recipe"], "seed": -1 if row["seed"] is None else row["seed"]}
    # "hparam/" tags, so that a run's own test/acc curve gains no extra point.
    metrics = {f"hparam/{key}": float(row[key]) for key in COLUMNS if row[key] is not None}
    writer.hparams(hparams, metrics, run_name=run_name)


def _write_csv(path: Path, runs: list[dict[str, Any]]) -> None:
    fields = ["model", "recipe", "seed", *COLUMNS, "test_loss", "infer_batch", "checkpoint", "run_dir"]
    with path.open("w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        out.writeheader()
        out.writerows(runs)
