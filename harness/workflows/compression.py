"""Smaller models, scored: the work of `python -m harness.compress`, as a Python function.

Variants of the checkpoint's model, each scored on the recipe's whole test split by the Trainer's own
validation pass with the metrics `harness.evaluate` uses (one confusion matrix -> accuracy, macro
F1; plus the loss), so the original's row equals what `harness.evaluate` reports:

    original     the checkpoint's weights (EMA when the recipe has trainer.ema, as evaluate)
    pruned N%    global magnitude pruning: the N % smallest |w| over all Linear and Conv weights
                 together are set to 0 (`prune.global_unstructured` + `L1Unstructured`, then
                 `prune.remove`, so the zeros are plain weights); biases and norms are kept; no fine-tuning
    int8         dynamic quantization of the Linear layers (`torch.ao.quantization.quantize_dynamic`):
                 int8 weights, activations quantized on the fly per batch; convolutions stay float

Per variant: size on disk (the bytes `torch.save(model.state_dict())` writes; zeros still take 4
bytes each there), the same file DEFLATE-compressed (zlib level 9, what zip and gzip use: this is
where pruning's zeros pay off), and CPU latency (`harness.core.speed.measure_inference`, batch 1 and
`data.eval_batch_size`). Everything runs on the CPU in float32: dynamic int8 kernels are CPU-only.
A recipe that runs at another precision (`trainer.precision: bf16` or `16`) gets one more score,
`original_at_recipe_precision`: the original as `harness.evaluate` scores it (the recipe's device,
precision and memory format), so the figure `evaluate` reports is in the report too, beside the
float32 row every variant is compared with.

A language model (`data.name: text_chars`, the GPT) gets the same variants, each scored per character
as `harness.evaluate` scores a text checkpoint: loss, bits per character and token accuracy over every
character of the validation text, and speed in tokens/s (`harness.workflows.compression_text`, which
also says what pruning and int8 do to the GPT's tied embedding and head).

Files, in runs/<name>-compress/<timestamp>/: config.yaml, compress.json (every figure),
compress.md (the table). `compress(recipe, checkpoint)` is the same thing from Python.
"""

from __future__ import annotations

import copy
import io
import time
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from harness.core.checkpoint import atomic_save
from harness.core.device import resolve_device
from harness.core.speed import measure_inference
from harness.data.text_chars import TEXT_CHARS
from harness.errors import HarnessError
from harness.metrics.report import classification_summary
from harness.recipe.build import build_evaluator
from harness.recipe.choices import DEFAULT_SPARSITIES
from harness.recipe.parts import build_evaluation, setup
from harness.recipe.run_folder import check_run_parent, command_folder, write_config, write_json
from harness.recipe.schema import MetricConfig, Recipe
from harness.workflows.compression_text import (
    TOKENS_NOTE,
    format_token_table,
    tied_linears,
    token_figures,
    tokens_per_s,
)
from harness.workflows.evaluation_text import token_metrics

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, "weight") for every Linear and Conv layer: what pruning works on."""
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]


def prune_global(model: nn.Module, sparsity: float) -> nn.Module:
    """A copy of `model` with the `sparsity` fraction of smallest-magnitude Linear/Conv weights set to 0,
    ranked over all those layers together (a layer that matters less loses more). A weight that is also an
    Embedding's (a GPT's tied head) is pruned as the Linear's, and the embedding shares its zeros."""
    if not 0 <= sparsity < 1:
        raise HarnessError(f"sparsity {sparsity}: must be in [0, 1)")
    pruned = copy.deepcopy(model)
    params = prunable_weights(pruned)
    if not params:
        raise HarnessError(f"{type(model).__name__} has no Linear or Conv layers to prune")
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    for module, name in params:
        prune.remove(module, name)  # weight = weight_orig * mask, as a plain parameter again
    return pruned


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros over all Linear/Conv weights."""
    weights = [module.weight.detach() for module, _ in prunable_weights(model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` whose Linear layers hold int8 weights (dynamic quantization, CPU)."""
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; it is still the one API in torch for this.
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions .* are deprecated")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).cpu(), {nn.Linear}, dtype=torch.qint8)


def file_sizes(model: nn.Module) -> dict[str, int]:
    """Bytes of `torch.save(model.state_dict())`, and of that file DEFLATE-compressed (zlib level 9)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    raw = buffer.getvalue()
    return {"state_dict_bytes": len(raw), "deflate_bytes": len(zlib.compress(raw, 9))}


def confusion_matrix_only(num_classes: int) -> dict[str, MetricConfig]:
    """The one metric every row needs: accuracy and macro-F1 both come from the confusion matrix."""
    return {"confusion_matrix": MetricConfig(type="confusion_matrix")}


def classifier_figures(scores: dict[str, Any], classes: Sequence[str]) -> dict[str, float]:
    """A classifier's row scores from a `Trainer.evaluate` pass with `confusion_matrix_only`."""
    summary = classification_summary(scores["confusion_matrix"], classes)
    return {"loss": scores["loss"], "accuracy": summary["accuracy"], "f1_macro": summary["averages"]["macro"]["f1"]}


def compress(recipe: Recipe, checkpoint: str | Path, sparsities: Sequence[float] = DEFAULT_SPARSITIES,
             recipe_path: str | Path | None = None, *, warmup: int = 10, repeats: int = 100,
             max_seconds: float | None = 2.0, write: bool = True, verbose: bool = True) -> dict[str, Any]:
    """Prune at each of `sparsities`, quantize to int8, score and time every variant against the original.

    `warmup` / `repeats` / `max_seconds` go to `harness.core.speed.measure_inference` for each variant
    and batch size. Returns {"checkpoint", "device", "num_test_samples", "batch_sizes", "rows": [...]},
    one row per variant; written to compress.json / compress.md with `write`. A language model's report
    has "step", "weights" and "num_tokens" (validation characters) instead of "epoch" and
    "num_test_samples", "block_size", "tied_weights", and rows of loss, perplexity, bits_per_token,
    token_accuracy and tokens_per_s (`harness.workflows.compression_text`).
    """
    sparsities = sorted(set(sparsities))
    if any(not 0 < s < 1 for s in sparsities):
        raise HarnessError(f"--sparsities {','.join(map(str, sparsities))}: each must be between 0 and 1 (exclusive)")
    if write:
        check_run_parent(recipe, recipe_path, "compress")  # the folder itself is made after the measurements
    # CPU and float32 whatever the recipe trained with: the int8 kernels are CPU-only, and every row
    # must be timed on the same device.
    as_trained, recipe = recipe, recipe.model_copy(deep=True)
    recipe.trainer.device, recipe.trainer.precision = "cpu", "32"
    recipe.trainer.compile, recipe.trainer.channels_last = False, False
    # The checkpoint's weights (EMA when the recipe says so), checked against the recipe's data the
    # way evaluate checks them, and the whole test split.
    text = recipe.data.name == TEXT_CHARS  # a language model: scored per character, as evaluate scores it
    metrics = token_metrics if text else confusion_matrix_only
    parts = build_evaluation(recipe, setup(recipe), checkpoint, "test", metrics)
    model, state, data = parts.model, parts.state, parts.data
    if not prunable_weights(model):  # every row but the original would be the original again
        raise HarnessError(f"{checkpoint}: {type(model).__name__} has no Linear or Conv layer; compress prunes and "
                           "quantizes those only, so there is nothing to compare")
    example, _ = next(iter(data.test))
    batch_sizes = (1, recipe.data.eval_batch_size)

    variants: list[tuple[str, nn.Module, float | None]] = [("original", model, 0.0)]
    for s in sparsities:
        variants.append((f"pruned {100 * s:g}%", prune_global(model, s), s))
    variants.append(("int8 dynamic (Linear)", quantize_int8(model), None))

    rows = []
    for name, variant, target in variants:
        variant.eval()
        started = time.perf_counter()
        # A fresh scoring Trainer per variant: the same loss and metrics, nothing carried over.
        evaluator = build_evaluator(recipe, variant, parts.evaluator.device, metrics(data.num_classes),
                                    data.num_classes)
        scores = evaluator.evaluate(data.test)
        speed = measure_inference(variant, example, batch_sizes, warmup=warmup, repeats=repeats,
                                  max_seconds=max_seconds, device="cpu")
        rows.append({
            "name": name,
            "target_sparsity": target,
            # int8 weights are packed inside the quantized layers: not counted
            "weight_sparsity": weight_sparsity(variant) if target is not None else None,
            "int8_linear_layers": sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in variant.modules()),
            **(token_figures(scores) if text else classifier_figures(scores, data.classes)),
            **file_sizes(variant),
            # keyed by the batch size as text, as JSON keys are
            "latency_ms_p50": {str(b["batch_size"]): b["latency_ms"]["p50"] for b in speed["batches"]},
            "samples_per_s": {str(b["batch_size"]): b["throughput_samples_per_s"] for b in speed["batches"]},
        })
        if text:  # a sample is a window of block_size characters
            rows[-1]["tokens_per_s"] = tokens_per_s(rows[-1]["samples_per_s"], example.shape[1])
        rows[-1]["seconds"] = round(time.perf_counter() - started, 3)
    report: dict[str, Any] = {
        "recipe": str(recipe_path) if recipe_path else None,
        "original_at_recipe_precision": _score_as_evaluate(as_trained, model, data, text) if
        as_trained.trainer.precision != "32" else None,
        "checkpoint": str(checkpoint),
        **({"step": state["global_step"], "weights": parts.weights} if text else {"epoch": state["epoch"]}),
        "device": f"cpu ({speed['device_name']}, {speed['threads']} threads)",  # the same for every row
        # every counted target: a classifier's test samples, a language model's validation characters
        ("num_tokens" if text else "num_test_samples"): evaluator.last_pass_samples,
        "batch_sizes": list(batch_sizes),
        "size_note": "state_dict: bytes of torch.save(model.state_dict()); deflated: that file compressed with "
                     "zlib level 9 (DEFLATE, as zip/gzip)",
        **({"block_size": example.shape[1], "speed_note": TOKENS_NOTE, "tied_weights": tied_linears(model)}
           if text else {}),
        "rows": rows,
    }
    if write:
        run_dir = command_folder(recipe, recipe_path, "compress")
        report["run_dir"] = str(run_dir)
        write_config(run_dir, recipe)
        write_json(run_dir / "compress.json", report)
        atomic_save((format_table(report) + "\n").encode(), run_dir / "compress.md", raw=True)
    if verbose:
        print(format_table(report), flush=True)
        if write:
            print(f"wrote {report['run_dir']}/compress.json and compress.md", flush=True)
    return report


def _score_as_evaluate(recipe: Recipe, model: nn.Module, data: Any, text: bool) -> dict[str, Any] | None:
    """The original scored as `harness.evaluate` scores it: on the recipe's device, at its precision and
    memory format (a copy of the model: the rows' model stays on the CPU in float32). None for fp16 on a
    machine without CUDA, where evaluate would refuse the recipe."""
    device = resolve_device(recipe.trainer.device)
    if recipe.trainer.precision == "16" and device.type != "cuda":
        return None
    metrics = token_metrics if text else confusion_matrix_only
    scores = build_evaluator(recipe, copy.deepcopy(model), device, metrics(data.num_classes),
                             data.num_classes).evaluate(data.test)
    return {"precision": recipe.trainer.precision, "device": str(device),
            **(token_figures(scores) if text else classifier_figures(scores, data.classes))}


def format_table(report: dict[str, Any]) -> str:
    """The Markdown table of a `compress` report: one row per variant, the original first."""
    if "num_tokens" in report:  # a language model's: per character
        return format_token_table(report)
    small, large = (str(b) for b in report["batch_sizes"])
    base = report["rows"][0]
    lines = [
        f"{report['checkpoint']} (epoch {report['epoch']}), {report['num_test_samples']} test samples, "
        f"{report['device']}",
        "",
        f"| model | zeros in Linear/Conv weights | test acc | Δ acc (points) | macro F1 | state_dict MB "
        f"| deflated MB | p50 ms, batch {small} | samples/s, batch {large} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        zeros = "n/a" if row["weight_sparsity"] is None else f"{100 * row['weight_sparsity']:.1f} %"
        delta = 100 * (row["accuracy"] - base["accuracy"])
        lines.append(
            f"| {row['name']} | {zeros} | {100 * row['accuracy']:.2f} % | {delta:+.2f} | {row['f1_macro']:.4f} "
            f"| {row['state_dict_bytes'] / 1e6:.3f} | {row['deflate_bytes'] / 1e6:.3f} "
            f"| {row['latency_ms_p50'][small]:.3f} | {row['samples_per_s'][large]:,.0f} |")
    evaluated = report.get("original_at_recipe_precision")
    if evaluated:
        lines += ["", f"The rows are scored in float32 on the CPU; the original at the recipe's precision "
                      f"({evaluated['precision']}, on {evaluated['device']}, as harness.evaluate scores it): test acc "
                      f"{100 * evaluated['accuracy']:.2f} %, macro F1 {evaluated['f1_macro']:.4f}, "
                      f"loss {evaluated['loss']:.4f}"]
    return "\n".join(lines)
