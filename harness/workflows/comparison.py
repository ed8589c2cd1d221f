"""Compare models on the same data: the work of `python -m harness.compare`, as a Python function.

Compare models on the same data: each recipe is trained (`harness.workflows.training.Run`) with the same `--set`
overrides, the same seed and so the same train / validation split, or a given checkpoint is used
as it is; then every model is scored on the same test samples by `harness.workflows.evaluation.evaluate` (the
accuracy and macro-F1 in the table are exactly `evaluate`'s figures for that checkpoint) and measured.

Before anything trains, the command refuses (one line) a comparison whose models would be scored on
different test samples: each recipe's resolved test split (its size, class names in label order and a
sha256 of its inputs and labels, `harness.recipe.data.identify_test_split`) must be the first one's. It
also refuses a repeated seed and a `--checkpoint` that is missing, unreadable, or not of its recipe's
model and data (`harness.recipe.weights.check_same_data`, shared with `evaluate`).

- parameters; FLOPs per sample: `torch.utils.flop_counter.FlopCounterMode` over one forward pass of
  a batch of 1 (matmuls and convolutions, 2 FLOPs per multiply-add; elementwise ops not counted);
- train seconds (`fit`, validation included) and peak memory while training: on CUDA
  `torch.cuda.max_memory_allocated` (tensors only), its peak reset before each model. Not measured on
  the CPU: in one process the resident-set high-water mark keeps what earlier models took (memory
  freed to the allocator is not given back), so the figure would depend on the order of the models;
- inference with `harness.core.speed.measure_inference`: latency p50 / p95 at batch 1, samples/s at
  `data.eval_batch_size`; measured once per model (its first finished run): speed does not depend on the seed.

`--seeds 0,1,2` trains each recipe once per seed and reports mean ± sample std (ddof=1) and the 95 %
t-interval of the mean over the seeds (`harness.stats.t_interval`); with one seed, the test accuracy's
95 % Wilson interval over the test samples instead. The two answer different questions: how much the
recipe's result moves when it is trained again, and how sure one model's figure is given the test sample.

Every pair of models is then compared on the same test samples (`harness.workflows.pairwise`): the
accuracy difference with its paired-bootstrap 95 % interval, McNemar's exact p-value (Holm-adjusted
over the pairs when more than two models are compared) and a verdict. It needs which test samples each
model gets right: after `evaluate`, one more pass of the model over the test split keeps that as a bool
tensor on the device (no per-sample Python), and its count of right answers must equal `evaluate`'s.

A run that fails (a non-finite loss, an error) is marked failed in the table and the others go on;
the command then exits 1. compare.csv and compare.md are rewritten, atomically, as each run finishes.

    runs/compare/<time>/
        compare.md       the tables (models, pairs) and what each column means
        compare.csv      one row per model and seed, with its status (params, FLOPs, speed: in one row per model)
        compare.json     everything: the models' rows and aggregates, every pair's test, the notes
        events.out.tfevents.*  the tables as TensorBoard text (TEXT tab), with logging.tensorboard
        <model>-seed<s>/ each training run's folder (config.yaml, summary.json, checkpoints, TensorBoard),
                         whose HParams row holds model, recipe and seed and, as its metrics, the run's
                         val/ and test/ scalars under their own tags: `tensorboard --logdir runs/compare/<time>`

Language models (`data.name: text_chars`) are scored per character on the whole validation text and
compared over its windows instead (`harness.workflows.comparison_text`: no McNemar, no per-character test).

`compare(recipe_paths, ...)` is the same thing from Python and returns that data.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from harness.core.checkpoint import atomic_save
from harness.core.device import move_to_device
from harness.core.loggers import TensorBoardLogger
from harness.core.trainer import NonFiniteLossError, TrainingInterrupted
from harness.data.text_chars import TEXT_CHARS
from harness.errors import HarnessError, Interrupted
from harness.metrics.functional import to_labels
from harness.metrics.report import format_table, mean_std
from harness.recipe.build import check_monitors
from harness.recipe.data import TOKEN_SOURCES, SplitIdentity, build_data, check_same_test_split, identify_test_split
from harness.recipe.parts import build_evaluation, setup
from harness.recipe.run_folder import best_checkpoint, last_checkpoint, new_run_folder, run_name, write_json
from harness.recipe.schema import Recipe, load_recipe
from harness.recipe.weights import check_same_data, check_vocabulary, load_checkpoint_model
from harness.stats import t_interval, wilson_interval
from harness.workflows.comparison_table import models_table
from harness.workflows.comparison_text import (
    TEXT_COLUMNS,
    TEXT_EXTRA,
    TEXT_MEASURED_ONCE,
    aggregate_text,
    check_same_windows,
    format_text_compare,
    identify_text_windows,
    score_text,
    text_pairwise,
)
from harness.workflows.evaluation import evaluate
from harness.workflows.pairwise import CONFIDENCE, pairs_notes, pairs_table_rows, pairwise
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

    Before anything trains: every recipe is validated, every checkpoint is read and checked against
    its recipe's model and data, and every model's test split is checked to be the same samples
    (`harness.recipe.data.check_same_test_split`). A run that fails (a non-finite loss, an error) is
    marked failed and the others go on; the table is rewritten as each run finishes.

    Returns {"compare_dir", "seeds", "device", "memory", "test_split", "models": [one dict per model:
    label, recipe, seeds, failed, per column its mean and std, and "test_acc_interval": {"method", "low",
    "high"}], "runs": [one dict per model and seed, with "status" ("done" | "failed") and "error"],
    "pairs": [one dict per pair of models, `harness.workflows.pairwise.pairwise`], "failed": [the failed runs]}
    (compare.json holds the same, with the printed notes).
    """
    if not recipe_paths:
        raise HarnessError("give at least one recipe to compare")
    first = load_recipe(recipe_paths[0], list(overrides))
    seeds = [first.trainer.seed] if seeds is None else list(seeds)
    if not seeds:
        raise HarnessError("--seeds: give at least one seed, e.g. --seeds 0,1,2")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise HarnessError(f"--seeds {','.join(map(str, seeds))}: seed {repeated[0]} is given twice; each seed is one "
                           "run, and a repeated seed would count one run twice: give distinct seeds, e.g. 0,1,2")
    labels = _labels([load_recipe(p, list(overrides)) for p in recipe_paths], recipe_paths)
    text = first.data.name == TEXT_CHARS  # language models: per character, compared over validation windows
    checkpoints = {k: Path(v) for k, v in (checkpoints or {}).items()}
    unknown = sorted(set(checkpoints) - set(labels))
    if unknown:
        raise HarnessError(f"--checkpoint {unknown[0]}=...: no such model; the models are {', '.join(labels)}")
    # Every recipe of every seed is validated, and must read the same data, before anything trains.
    recipes = {(label, seed): load_recipe(path, [*overrides, f"trainer.seed={seed}"])
               for label, path in zip(labels, recipe_paths, strict=True) for seed in seeds}
    for (label, _), recipe in recipes.items():
        if (recipe.data.name == TEXT_CHARS) != text:  # per character vs per test sample: no common table
            raise HarnessError(f"{label}: data.name={recipe.data.name} beside {labels[0]}'s {first.data.name}: "
                               f"a comparison holds classifiers (scored per test sample) or {TEXT_CHARS} language "
                               "models (scored per character over validation windows), not both")
        check_monitors(recipe)
        if recipe.trainer.fast_dev_run and label not in checkpoints:
            raise HarnessError("trainer.fast_dev_run writes no checkpoint to compare; for a quick comparison "
                               "use a small budget, e.g. --set trainer.epochs=1 --set trainer.limit_train_batches=20")
        if recipe.data.val_size != first.data.val_size and label not in checkpoints:
            raise HarnessError(f"{label}: data.val_size={recipe.data.val_size!r} differs from {labels[0]}'s "
                               f"{first.data.val_size!r}; trained models are compared on the same hold-out: "
                               "add --set data.val_size=...")
    for label, path in checkpoints.items():  # exists, readable, this recipe's model and data
        recipe = recipes[(label, seeds[0])]
        _, state, _ = load_checkpoint_model(recipe, path)
        check_same_data(state, recipe, "test", path)
        if recipe.data.name in TOKEN_SOURCES:  # token ids must mean what they meant in training
            check_vocabulary(state, build_data(recipe.data, torch.device("cpu"), recipe.trainer.seed).vocabulary, path)
    # The test splits themselves, not the recipe keys: the same samples, classes and inputs for every model.
    identities: dict[str, SplitIdentity] = {}
    splits = []
    for label in labels:
        data_cfg = recipes[(label, seeds[0])].data
        key = data_cfg.model_dump_json()
        if key not in identities:
            identities[key] = identify_text_windows(data_cfg) if text else identify_test_split(data_cfg)
        splits.append((label, data_cfg, identities[key]))
    (check_same_windows if text else check_same_test_split)(splits)
    test_split = splits[0][2]

    device = setup(first).device
    compare_dir = new_run_folder(Path(first.logging.root) / "compare")
    what = (f"validation text ({test_split.size} windows of {first.data.block_size} characters)" if text
            else f"{first.data.name} test split ({test_split.describe()})")
    print(f"compare: {', '.join(labels)} on the same {what}, "
          f"seeds {seeds}; folder {compare_dir}", flush=True)
    # One real input for the FLOP count: shape, dtype and layout exactly as the models see them.
    example = next(iter(build_data(first.data, device, seeds[0]).test))[0][:1]
    jobs = [(label, path, seed) for label, path in zip(labels, recipe_paths, strict=True)
            for seed in ([None] if label in checkpoints else seeds)]
    result: dict[str, Any] = {"compare_dir": str(compare_dir), "seeds": seeds, "device": str(device),
                              "memory": _memory_note(device), "planned": len(jobs),
                              "kind": "text" if text else "classifier",
                              "test_split": {"samples": test_split.size, "classes": list(test_split.classes),
                                             "sha256": test_split.fingerprint,
                                             **({"block_size": first.data.block_size} if text else {})},
                              "models": [], "runs": [], "pairs": [], "failed": []}
    runs: list[dict[str, Any]] = result["runs"]
    # model -> seed -> which test samples it gets right (text: each validation window's summed loss and characters)
    correct: dict[str, dict[int | None, Any]] = {}
    columns = [*TEXT_COLUMNS, *TEXT_MEASURED_ONCE, *TEXT_EXTRA] if text else [*COLUMNS, *MEASURED_ONCE, "test_loss"]
    writer = TensorBoardLogger(compare_dir) if first.logging.tensorboard else None
    bar = tqdm(total=len(jobs), desc="models", unit="run", disable=not (first.trainer.progress and sys.stderr.isatty()))
    try:
        for label, path, seed in jobs:
            recipe = recipes[(label, seeds[0] if seed is None else seed)]
            row: dict[str, Any] = {"model": label, "recipe": str(path), "seed": seed, "status": "done", "error": None,
                                   **dict.fromkeys([*columns, "checkpoint"])}
            run_dir = None if seed is None else compare_dir / f"{label}-seed{seed}"
            row["run_dir"] = str(run_dir) if run_dir is not None else None
            measure = not any(r["model"] == label and r["params"] is not None for r in runs)
            try:
                figures, right = _run_one(recipe, path, run_dir, checkpoints.get(label), device, example, measure,
                                          hparams={"model": label, "recipe": str(path), "seed": seed}, text=text)
                row.update(figures)
                correct.setdefault(label, {})[seed] = right
            except (TrainingInterrupted, Interrupted, KeyboardInterrupt):
                raise
            except Exception as e:  # any error (one model's failure must not lose the others' figures)
                if not isinstance(e, (HarnessError, NonFiniteLossError)):
                    traceback.print_exc()  # not bad input and not a divergence: show where it came from
                row.update(status="failed", error=f"{type(e).__name__}: {' '.join(str(e).split())}")
            runs.append(row)
            if row["status"] == "failed":
                result["failed"].append(row)
                bar.write(f"{label}" + (f" seed {seed}" if seed is not None else "") + f": failed: {row['error']}",
                          file=sys.stderr)
            else:
                figures = (f"val loss {row['val_loss']:.4f}  bits/char {row['bits_per_char']:.4f}" if text
                           else f"test acc {row['test_acc']:.4f}  macro-F1 {row['test_macro_f1']:.4f}")
                bar.write(f"{label}" + (f" seed {seed}" if seed is not None else f" ({row['checkpoint']})")
                          + f": {figures}", file=sys.stdout)
            result["models"] = [aggregate_text(m, [r for r in runs if r["model"] == m]) if text
                                else _aggregate(m, [r for r in runs if r["model"] == m], test_split.size)
                                for m in labels if any(r["model"] == m for r in runs)]
            result["pairs"] = (text_pairwise if text else pairwise)(labels, correct, seeds)
            _write_tables(compare_dir, result)  # as each run finishes: an interruption loses no finished figure
            bar.update()
        if writer is not None:  # the finished tables in TensorBoard's TEXT tab
            writer.text("compare", format_compare(result, markdown=True))
    finally:
        bar.close()
        if writer is not None:
            writer.close()

    print(format_compare(result), flush=True)
    print(f"compare folder: {compare_dir}  (compare.md, compare.csv; tensorboard --logdir {compare_dir})", flush=True)
    return result


def _run_one(recipe: Recipe, path: str | Path, run_dir: Path | None, checkpoint: Path | None, device: torch.device,
             example: torch.Tensor, measure: bool, hparams: dict[str, Any],
             text: bool = False) -> tuple[dict[str, Any], Any]:
    """Train one model in `run_dir` (or take `checkpoint` as it is), score it on the test split, measure it.
    Returns its figures and which test samples it gets right (`test_correctness`); a language model
    (`text`): its per-token figures and per-window losses (`comparison_text.score_text`)."""
    row: dict[str, Any] = {}
    if checkpoint is None:
        assert run_dir is not None
        exact = _reset_peak_memory(device)
        summary = Run(recipe, path, run_dir=run_dir, verbose=False, hparams=hparams).execute()
        row.update(train_seconds=summary["fit_seconds"], peak_mem_mb=_peak_memory_mb(device) if exact else None)
        best = best_checkpoint(run_dir)
        checkpoint = best if best.exists() else last_checkpoint(run_dir)
    if text:
        figures, windows = score_text(recipe, checkpoint, measure, count_flops)
        return {**row, **figures, "checkpoint": str(checkpoint)}, windows
    scores = evaluate(recipe, checkpoint, "test", speed=measure, write=False, verbose=False)
    row.update(checkpoint=str(checkpoint), test_acc=scores["accuracy"],
               test_macro_f1=scores["averages"]["macro"]["f1"], test_loss=scores["loss"])
    right = test_correctness(recipe, checkpoint)
    counted = sum(scores["confusion_matrix"][i][i] for i in range(len(scores["confusion_matrix"])))
    if right.shape[0] != scores["num_samples"] or int(right.sum()) != counted:  # the same predictions, or a bug
        raise RuntimeError(f"{checkpoint}: the per-sample pass got {int(right.sum())} of {right.shape[0]} test samples "
                           f"right, evaluate {counted} of {scores['num_samples']}")
    if measure:  # architecture and speed figures: measured once per model, with its first finished run
        speed = scores["speed"]
        one, big = speed["batches"][0], speed["batches"][-1]  # batch 1, data.eval_batch_size
        fresh = load_checkpoint_model(recipe, checkpoint)[0].to(example.device)  # its own size (vocabulary)
        if recipe.data.name in TOKEN_SOURCES:  # token ids of this model's own vocabulary
            example = next(iter(build_data(recipe.data, example.device, recipe.trainer.seed).test))[0][:1]
        row.update(params=speed["num_parameters"], flops_per_sample=count_flops(fresh, example),
                   infer_batch=big["batch_size"], infer_samples_per_s=big["throughput_samples_per_s"],
                   latency_p50_ms=one["latency_ms"]["p50"], latency_p95_ms=one["latency_ms"]["p95"])
    return row, right


def test_correctness(recipe: Recipe, checkpoint: str | Path) -> torch.Tensor:
    """Which test samples `checkpoint` classifies right, in the test split's order: a bool tensor on the device.

    The model, weights (raw or EMA), data, precision and `validation_step` are `evaluate`'s
    (`build_evaluation`), and the labels are the metrics' (`to_labels`), so the count of True equals
    the diagonal of `evaluate`'s confusion matrix. One comparison per batch; nothing leaves the device.
    """
    env = setup(recipe)
    parts = build_evaluation(recipe, env, checkpoint, "test", lambda num_classes: {})
    evaluator, num_classes = parts.evaluator, parts.data.num_classes
    evaluator.model.eval()
    right = []
    with torch.no_grad():
        for batch in parts.loader:
            with evaluator.autocast():
                _, preds, target = evaluator.validation_step(move_to_device(batch, env.device))
            right.append(to_labels(preds, num_classes) == target)
    return torch.cat(right)


def format_compare(result: dict[str, Any], markdown: bool = False) -> str:
    """The models' table (one row per model; mean ± sample std over seeds), the pairs' table, and the notes."""
    if result.get("kind") == "text":
        return format_text_compare(result, markdown)
    digits = {"test_acc": 4, "test_macro_f1": 4, "train_seconds": 1, "infer_samples_per_s": 0,
              "latency_p50_ms": 3, "latency_p95_ms": 3, "peak_mem_mb": 0}
    table = models_table(result["models"], COLUMNS, digits, counts=("params", "flops_per_sample"),
                         interval=("test_acc", "test_acc_interval", f"test acc {100 * CONFIDENCE:g} %"),
                         markdown=markdown)
    pair_header, pair_rows = pairs_table_rows(result["pairs"])
    pairs = format_table(pair_header, pair_rows, markdown=markdown) if pair_rows else ""
    batch = next((r["infer_batch"] for r in result["runs"] if r["infer_batch"] is not None), "-")
    split = result["test_split"]
    several = len(result["seeds"]) > 1
    notes = [
        f"seeds {result['seeds']}; ± is the sample std (ddof=1) over the seeds that finished, and test acc "
        f"{100 * CONFIDENCE:g} % the t-interval of the mean over them (a model scored from --checkpoint: "
        "Wilson, over its test samples). Seed variation is a different question from test-set sampling: "
        "these say how much a recipe's result moves when it is trained again, not how sure one model's "
        "figure is given the test sample (the Wilson interval and the pairs' tests)"
        if several else f"seed {result['seeds'][0]}; test acc {100 * CONFIDENCE:g} %: the Wilson score interval "
        "over the test samples (how sure the figure is given the test sample; training again moves it too)",
        f"test acc / macro-F1: harness.evaluate on the test split (best.pt, else last.pt); every model on the same "
        f"{split['samples']} test samples of {len(split['classes'])} classes (sha256 {split['sha256'][:12]})",
        "FLOPs/sample: FlopCounterMode, one forward pass of a batch of 1 (matmul/conv; 2 per multiply-add)",
        f"infer samples/s at batch {batch}; latency p50 / p95 at batch 1 (harness.core.speed, on {result['device']})",
        f"peak mem: {result['memory']}",
    ]
    notes += [f"failed: {r['model']}" + (f" seed {r['seed']}" if r["seed"] is not None else "") + f": {r['error']}"
              for r in result["failed"]]
    notes += pairs_notes(result["pairs"], result["seeds"])
    if len(result["runs"]) < result["planned"]:
        notes.append(f"{len(result['runs'])} of {result['planned']} runs finished so far")
    if markdown:
        return ("# compare\n\n" + table + ("\n\n" + pairs if pairs else "") + "\n\n"
                + "\n".join(f"- {n}" for n in notes))
    return table + ("\n\n" + pairs if pairs else "") + "\n" + "\n".join(f"# {n}" for n in notes)


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


def _aggregate(label: str, runs: list[dict[str, Any]], samples: int) -> dict[str, Any]:
    done = [r for r in runs if r["status"] == "done"]
    model: dict[str, Any] = {"label": label, "recipe": runs[0]["recipe"], "seeds": [r["seed"] for r in done],
                             "failed": [r["seed"] for r in runs if r["status"] != "done"]}
    for key in COLUMNS:
        values = [r[key] for r in done if r[key] is not None]
        model[key] = mean_std(values) if values else (None, math.nan)
    accs = [r["test_acc"] for r in done]
    model["test_acc_interval"] = None
    if len(accs) > 1:  # over the seeds: how much the recipe's result moves when trained again
        low, high = t_interval(accs, CONFIDENCE)
        model["test_acc_interval"] = {"method": f"t-interval over {len(accs)} seeds", "low": low, "high": high}
    elif accs:  # one model: over the sampling of the test set
        low, high = wilson_interval(round(accs[0] * samples), samples, CONFIDENCE)
        model["test_acc_interval"] = {"method": f"Wilson score over {samples} test samples", "low": low, "high": high}
    return model


def _memory_note(device: torch.device) -> str:
    if device.type == "cuda":
        return ("torch.cuda.max_memory_allocated while training (tensors only), its peak reset before each model, "
                "so each figure is that model's own")
    return (f"not measured on {device.type}: in one process the resident-set high-water mark keeps what the "
            "models before took (freed memory stays with the allocator), so a figure would depend on the order")


def _reset_peak_memory(device: torch.device) -> bool:
    """Start a fresh peak-memory count; False where one process cannot measure one model's peak alone."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    return False


def _peak_memory_mb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 1e6


def _write_tables(folder: Path, result: dict[str, Any]) -> None:
    """compare.csv and compare.md, each written atomically (the previous version or the new one, never torn)."""
    measured = ([*TEXT_COLUMNS, *TEXT_EXTRA] if result.get("kind") == "text" else [*COLUMNS, "test_loss"])
    fields = ["model", "recipe", "seed", "status", *measured, "infer_batch", "checkpoint", "run_dir", "error"]
    text = io.StringIO()
    out = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")
    out.writeheader()
    out.writerows(result["runs"])
    atomic_save(text.getvalue().encode(), folder / "compare.csv", raw=True)
    atomic_save((format_compare(result, markdown=True) + "\n").encode(), folder / "compare.md", raw=True)
    write_json(folder / "compare.json", {**result, "table": format_compare(result)})


