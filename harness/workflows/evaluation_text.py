"""`evaluate` for a language model (`data.name: text_chars`): scored per token, not per sample.

The loss, perplexity, bits per character and token accuracy over every character of the split
(text_chars has one held-out split, the validation text: `--split test` and `--split val` score the
same characters), written as `eval-<checkpoint>-<split>.json` in the checkpoint's run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.recipe.run_folder import results_folder, write_json
from harness.recipe.schema import MetricConfig

TOKEN_METRICS = ("perplexity", "bits_per_token", "token_accuracy")


def token_metrics(num_classes: int) -> dict[str, MetricConfig]:
    """A language model's report: perplexity, bits per token (character) and token accuracy."""
    return {name: MetricConfig(type=name) for name in TOKEN_METRICS}


def token_report(parts: Any, scores: dict[str, Any], checkpoint: Path, split: str, device: str,
                 eval_seconds: float, write: bool, verbose: bool) -> dict[str, Any]:
    """The per-token report of a language model's checkpoint from one scoring pass's `scores`."""
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint), "step": parts.state["global_step"], "weights": parts.weights, "split": split,
        "num_tokens": parts.evaluator.last_pass_samples, "device": device, "loss": scores[f"{split}/loss"],
        **{name: scores[f"{split}/{name}"] for name in TOKEN_METRICS},
        "eval_seconds": round(eval_seconds, 3)}
    if write:
        path = results_folder(checkpoint) / f"eval-{checkpoint.stem}-{split}.json"
        result["files"] = {"json": str(path)}
        write_json(path, result)
    if verbose:
        print(f"# {checkpoint} (step {result['step']}, {parts.weights})\n# {split}: {result['num_tokens']} tokens "
              f"(the whole validation text) on {device} in {eval_seconds:.2f} s\n"
              + "  ".join(f"{k} {result[k]:.4f}" for k in ("loss", *TOKEN_METRICS[:2], "token_accuracy"))
              + (f"\nwrote {result['files']['json']}" if write else ""), flush=True)
    return result
