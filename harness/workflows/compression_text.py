"""`compress` for a language model (`data.name: text_chars`): each variant scored per character.

A row holds what `harness.evaluate` reports for a text checkpoint, over every character of the
validation text (text_chars has one held-out split: the test pass scores it): the loss, bits per
character and token accuracy, plus the speed in tokens/s. `measure_inference` times batches of
validation windows and counts samples (windows); a window of `data.block_size` characters is
`block_size` next-character predictions, so tokens/s = samples/s x block_size.

Tied weights: the GPT's `lm_head.weight` is its token embedding `wte.weight` (one matrix, a Parameter
shared by an Embedding and a Linear). Pruning works on the Linear, so the pruned copies zero that
shared matrix, and the input embedding loses the same entries (the tie is kept: one matrix, as the
model defines it). Dynamic int8 quantization replaces the Linear with a quantized copy of its weight
and leaves the Embedding float32: in the int8 copy the tie is broken (head int8, embedding float32 as
trained), and it is that copy's outputs that its row scores. `tied_linears` names such layers, and the
report says so under the table.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from harness.workflows.evaluation_text import TOKEN_METRICS

TOKENS_NOTE = ("a sample is a window of block_size characters, each predicting the next one: tokens/s = "
               "samples/s x block_size")


def tied_linears(model: nn.Module) -> list[str]:
    """'<linear>.weight is <embedding>.weight' for every Linear whose weight is an Embedding's Parameter."""
    embeddings = {id(m.weight): name for name, m in model.named_modules() if isinstance(m, nn.Embedding)}
    return [f"{name}.weight is {embeddings[id(m.weight)]}.weight" for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and id(m.weight) in embeddings]


def tied_note(tied: list[str]) -> str | None:
    """What pruning and int8 do to tied weights, in one sentence; None without any tie."""
    if not tied:
        return None
    return (f"{', '.join(tied)} (tied): pruning zeroes the shared matrix, so the input embedding loses the same "
            "entries; int8 quantizes the head's copy only (the embedding stays float32, the tie is broken in that "
            "copy, and its row scores the quantized model)")


def token_figures(scores: dict[str, Any]) -> dict[str, float]:
    """A row's scores from a `Trainer.evaluate` pass with `token_metrics`: loss (nats per character),
    perplexity, bits per character (`bits_per_token`), token accuracy."""
    return {"loss": scores["loss"], **{name: scores[name] for name in TOKEN_METRICS}}


def tokens_per_s(samples_per_s: dict[str, float], block_size: int) -> dict[str, float]:
    """Windows per second (keyed by batch size) -> characters per second."""
    return {batch: rate * block_size for batch, rate in samples_per_s.items()}


def format_token_table(report: dict[str, Any]) -> str:
    """The Markdown table of a language model's `compress` report: one row per variant, the original first."""
    small, large = (str(b) for b in report["batch_sizes"])
    base = report["rows"][0]
    lines = [
        f"{report['checkpoint']} (step {report['step']}, {report['weights']}), {report['num_tokens']:,} characters "
        f"(the whole validation text), {report['device']}",
        "",
        f"| model | zeros in Linear weights | val loss | bits per char | Δ bits per char | token acc | state_dict MB "
        f"| deflated MB | p50 ms, batch {small} | tokens/s, batch {large} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        zeros = "n/a" if row["weight_sparsity"] is None else f"{100 * row['weight_sparsity']:.1f} %"
        delta = row["bits_per_token"] - base["bits_per_token"]
        lines.append(
            f"| {row['name']} | {zeros} | {row['loss']:.4f} | {row['bits_per_token']:.4f} | {delta:+.4f} "
            f"| {100 * row['token_accuracy']:.2f} % | {row['state_dict_bytes'] / 1e6:.3f} "
            f"| {row['deflate_bytes'] / 1e6:.3f} | {row['latency_ms_p50'][small]:.3f} "
            f"| {row['tokens_per_s'][large]:,.0f} |")
    lines += ["", f"Batches are windows of {report['block_size']} characters: {TOKENS_NOTE}."]
    if report.get("tied_weights"):
        lines.append(f"{tied_note(report['tied_weights'])}.")
    evaluated = report.get("original_at_recipe_precision")
    if evaluated:
        lines.append(f"The rows are scored in float32 on the CPU; the original at the recipe's precision "
                     f"({evaluated['precision']}, on {evaluated['device']}, as harness.evaluate scores it): loss "
                     f"{evaluated['loss']:.4f}, bits per char {evaluated['bits_per_token']:.4f}, token acc "
                     f"{100 * evaluated['token_accuracy']:.2f} %")
    return "\n".join(lines)
