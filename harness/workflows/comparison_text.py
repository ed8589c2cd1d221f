"""`compare` for language models (`data.name: text_chars`): scored per character, compared over windows.

Each model is scored on the whole validation text as `harness.evaluate` scores it (loss in nats per
character, bits per character, perplexity, token accuracy: the figures of `evaluation_text.token_report`
from the same pass), and in that pass a `WindowLossRecorder` keeps every validation window's summed
loss and character count on the device.

A text's characters are not independent samples: neighbouring characters share their context, so a
per-character test (McNemar, a bootstrap over characters) would take a 100,000-character text for far
more evidence than it is. The pairs are compared over the validation windows instead, the text cut
into consecutive windows of `data.block_size` characters as `SequentialWindows` cuts it: each window
is a cluster of dependent characters and the unit that is resampled, and both models are scored on the
same windows (paired). Δ loss = sum over windows of (NLL_A - NLL_B) / characters (a ratio: per
character, as the loss is), its 95 % percentile interval over `RESAMPLES` resamples of the windows and a
two-sided bootstrap p-value (`harness.stats.paired_ratio_bootstrap`), Holm-adjusted over the pairs when
more than two models are compared. The verdict says "<A> better" when the interval lies below 0 and the
(adjusted) p-value is at most `ALPHA`, "<B> better" when above, else "no clear difference".

text_chars has no test split: validation during training scores a fixed subset of these windows
(`trainer.limit_val_batches`) and picks best.pt by it, so the whole validation text is not a test
independent of the choice of checkpoint; the table says so.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.core.speed import measure_inference
from harness.core.window_losses import WindowLossRecorder
from harness.data.text_chars import load_text_chars, resolve_text_path
from harness.errors import HarnessError
from harness.metrics.report import format_table, mean_std
from harness.recipe.data import SplitIdentity
from harness.recipe.parts import build_evaluation, setup
from harness.recipe.schema import DataConfig, Recipe
from harness.stats import holm_adjust, paired_ratio_bootstrap, t_interval
from harness.workflows.comparison_table import models_table
from harness.workflows.evaluation_text import token_metrics, token_report
from harness.workflows.pairwise import ALPHA, BOOTSTRAP_SEED, CONFIDENCE, RESAMPLES, format_p

TEXT_COLUMNS = {  # csv field -> table heading
    "val_loss": "val loss",
    "bits_per_char": "bits/char",
    "perplexity": "perplexity",
    "token_acc": "token acc",
    "params": "params",
    "flops_per_window": "FLOPs/window",
    "train_seconds": "train s",
    "infer_tokens_per_s": "infer tokens/s",
    "latency_p50_ms": "p50 ms",
    "latency_p95_ms": "p95 ms",
    "peak_mem_mb": "peak mem MB",
}
TEXT_MEASURED_ONCE = ("params", "flops_per_window", "infer_batch", "infer_tokens_per_s", "latency_p50_ms",
                      "latency_p95_ms")
TEXT_EXTRA = ("characters", "windows", "loss_low", "loss_high")  # per run, in the csv
WindowLosses = tuple[torch.Tensor, torch.Tensor]  # per validation window: summed NLL (nats), characters predicted
WINDOW_KEYS = ("path", "root", "encoding", "block_size")  # the data keys that decide the validation windows


def identify_text_windows(cfg: DataConfig) -> SplitIdentity:
    """The validation windows `cfg` gives: how many, the vocabulary (the classes) and a sha256 of the
    validation characters' ids and the block size. Equal identities score on the same windows."""
    text = load_text_chars(resolve_text_path(cfg.path or "", cfg.root), cfg.encoding)
    _, val = text.split()
    assert cfg.block_size is not None  # the schema requires it for text_chars
    digest = hashlib.sha256(repr((cfg.block_size, text.vocabulary)).encode())
    digest.update(val.numpy().tobytes())
    windows = math.ceil((len(val) - 1) / cfg.block_size)
    return SplitIdentity(windows, tuple(text.vocabulary), digest.hexdigest(),
                         unit=f"validation windows of {cfg.block_size} characters")


def check_same_windows(splits: Sequence[tuple[str, DataConfig, SplitIdentity]]) -> None:
    """Refuse (one line) models whose validation windows differ: every one against the first."""
    first_name, first_cfg, first = splits[0]
    for name, cfg, split in splits[1:]:
        if split != first:
            keys = [f"data.{k}={getattr(first_cfg, k)!r} vs {getattr(cfg, k)!r}" for k in WINDOW_KEYS
                    if getattr(first_cfg, k) != getattr(cfg, k)]
            raise HarnessError(f"{first_name} and {name} would be scored on different validation windows "
                               f"({first.size} vs {split.size} windows{'; ' + ', '.join(keys) if keys else ''}); "
                               "language models are compared window by window on the same text: give them the "
                               "same data.path, encoding and block_size, e.g. with --set")


def score_text(recipe: Recipe, checkpoint: Path, measure: bool,
               count_flops: Callable[[nn.Module, torch.Tensor], int]) -> tuple[dict[str, Any], WindowLosses]:
    """One pass over the whole validation text: `evaluate`'s per-token figures and the per-window losses;
    with `measure`, parameters, FLOPs of one window (`count_flops`) and inference speed."""
    env = setup(recipe)
    parts = build_evaluation(recipe, env, checkpoint, "test", token_metrics, trainer_class=WindowLossRecorder)
    started = time.perf_counter()
    scores = parts.evaluator.validate(parts.loader, prefix="test")
    report = token_report(parts, scores, checkpoint, "test", str(env.device), time.perf_counter() - started,
                          write=False, verbose=False)
    nll, tokens = parts.evaluator.window_losses()
    total = int(tokens.sum())
    if total != report["num_tokens"] or not math.isclose(float(nll.sum()) / total, report["loss"], rel_tol=1e-6):
        raise RuntimeError(f"{checkpoint}: the per-window pass summed {float(nll.sum()) / total:.6f} nats over "
                           f"{total} characters, evaluate {report['loss']:.6f} over {report['num_tokens']}")
    alone = paired_ratio_bootstrap(nll, torch.zeros_like(nll), tokens, n_resamples=RESAMPLES,
                                   confidence=CONFIDENCE, seed=BOOTSTRAP_SEED)
    row: dict[str, Any] = {"val_loss": report["loss"], "bits_per_char": report["bits_per_token"],
                           "perplexity": report["perplexity"], "token_acc": report["token_accuracy"],
                           "characters": total, "windows": int(nll.shape[0]), "loss_low": alone["low"],
                           "loss_high": alone["high"]}
    if measure:  # architecture and speed: once per model; a sample is a window of block_size characters
        inputs, _ = next(iter(parts.loader))
        batch = recipe.data.eval_batch_size
        speed = measure_inference(parts.model, inputs, batch_sizes=(1, batch), device=env.device,
                                  precision=recipe.trainer.precision)
        one, big = speed["batches"][0], speed["batches"][-1]
        row.update(params=speed["num_parameters"], flops_per_window=count_flops(parts.model, inputs[:1]),
                   infer_batch=big["batch_size"], infer_tokens_per_s=big["throughput_samples_per_s"] * inputs.shape[1],
                   latency_p50_ms=one["latency_ms"]["p50"], latency_p95_ms=one["latency_ms"]["p95"])
    return row, (nll, tokens)


def aggregate_text(label: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One model's row: each column's mean and sample std over the seeds that finished, and the loss's interval
    (t over seeds; one run: the bootstrap over the validation windows)."""
    done = [r for r in runs if r["status"] == "done"]
    model: dict[str, Any] = {"label": label, "recipe": runs[0]["recipe"], "seeds": [r["seed"] for r in done],
                             "failed": [r["seed"] for r in runs if r["status"] != "done"]}
    for key in TEXT_COLUMNS:
        values = [r[key] for r in done if r[key] is not None]
        model[key] = mean_std(values) if values else (None, math.nan)
    losses = [r["val_loss"] for r in done]
    model["loss_interval"] = None
    if len(losses) > 1:
        low, high = t_interval(losses, CONFIDENCE)
        model["loss_interval"] = {"method": f"t-interval over {len(losses)} seeds", "low": low, "high": high}
    elif losses:
        model["loss_interval"] = {"method": f"bootstrap over {done[0]['windows']} validation windows",
                                  "low": done[0]["loss_low"], "high": done[0]["loss_high"]}
    return model


def text_pairwise(labels: Sequence[str], windows: Mapping[str, Mapping[int | None, WindowLosses]],
                  seeds: Sequence[int]) -> list[dict[str, Any]]:
    """One dict per pair of `labels` (A before B): Δ loss and Δ bits per character over the same validation
    windows, the window bootstrap's interval and p-value, Holm's adjusted p-value and the verdict."""
    pairs = []
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            pairs.append(_text_pair(a, b, windows.get(a, {}), windows.get(b, {}), seeds))
    tested = [p for p in pairs if p["p_value"] is not None]
    for pair, adjusted in zip(tested, holm_adjust([p["p_value"] for p in tested]), strict=True):
        pair["p_holm"] = adjusted
        pair["verdict"] = text_verdict(pair["a"], pair["b"], pair["interval"], adjusted)
    for pair in pairs:
        pair["holm_family"] = len(tested)
    return pairs


def text_verdict(a: str, b: str, interval: Sequence[float], p: float) -> str:
    """'<A> better' when Δ loss (A - B) lies below 0 and `p` is at most ALPHA, '<B> better' above; else
    'no clear difference'."""
    low, high = interval
    if p <= ALPHA and high < 0:
        return f"{a} better, p {format_p(p)}"
    if p <= ALPHA and low > 0:
        return f"{b} better, p {format_p(p)}"
    return f"no clear difference (p {format_p(p)})"


def _text_pair(a: str, b: str, runs_a: Mapping[int | None, WindowLosses], runs_b: Mapping[int | None, WindowLosses],
               seeds: Sequence[int]) -> dict[str, Any]:
    pair: dict[str, Any] = dict.fromkeys(["seed_a", "seed_b", "windows", "characters", "loss_a", "loss_b",
                                          "difference", "interval", "bits_difference", "bits_interval", "p_value",
                                          "p_holm", "verdict", "over_seeds"])
    pair.update(a=a, b=b)
    chosen = next(((sa, sb) for s in seeds if (sa := _key_for(runs_a, s)) is not _MISSING
                   and (sb := _key_for(runs_b, s)) is not _MISSING), None)
    if chosen is None:
        missing = a if not runs_a else b if not runs_b else f"{a} and {b} (no seed finished for both)"
        pair["verdict"] = f"not compared: {missing} has no finished run"
        return pair
    (nll_a, tokens_a), (nll_b, tokens_b) = runs_a[chosen[0]], runs_b[chosen[1]]
    if not torch.equal(tokens_a, tokens_b):  # the same windows in the same order, or a bug
        raise RuntimeError(f"{a} and {b} were scored on different validation windows")
    test = paired_ratio_bootstrap(nll_a, nll_b, tokens_a, n_resamples=RESAMPLES, confidence=CONFIDENCE,
                                  seed=BOOTSTRAP_SEED)
    characters = int(tokens_a.sum())
    bits = math.log(2)
    pair.update(seed_a=chosen[0], seed_b=chosen[1], windows=int(tokens_a.shape[0]), characters=characters,
                loss_a=float(nll_a.sum()) / characters, loss_b=float(nll_b.sum()) / characters,
                difference=test["difference"], interval=[test["low"], test["high"]],
                bits_difference=test["difference"] / bits, bits_interval=[test["low"] / bits, test["high"] / bits],
                p_value=test["p_value"])
    common = [s for s in seeds if s in runs_a and s in runs_b]
    if len(common) >= 2:  # the other question: how the difference moves when both are trained again
        differences = [float(runs_a[s][0].sum() / runs_a[s][1].sum() - runs_b[s][0].sum() / runs_b[s][1].sum())
                       for s in common]
        pair["over_seeds"] = {"seeds": common, "differences": differences, "mean": statistics.fmean(differences),
                              "std": statistics.stdev(differences),
                              "t_interval": [*t_interval(differences, CONFIDENCE)]}
    return pair


_MISSING = object()


def _key_for(runs: Mapping[int | None, WindowLosses], seed: int) -> Any:
    if seed in runs:
        return seed
    return None if None in runs else _MISSING


def format_text_compare(result: dict[str, Any], markdown: bool = False) -> str:
    """The language models' table, the pairs' table and the notes (`format_compare` for text)."""
    digits = {"val_loss": 4, "bits_per_char": 4, "perplexity": 3, "token_acc": 4, "train_seconds": 1,
              "infer_tokens_per_s": 0, "latency_p50_ms": 3, "latency_p95_ms": 3, "peak_mem_mb": 0}
    table = models_table(result["models"], TEXT_COLUMNS, digits, counts=("params", "flops_per_window"),
                         interval=("val_loss", "loss_interval", f"val loss {100 * CONFIDENCE:g} %"), markdown=markdown)
    pairs = result["pairs"]
    holm = any(p["holm_family"] > 1 for p in pairs)
    over = any(p["over_seeds"] for p in pairs)
    ci = f"{100 * CONFIDENCE:g} %"
    header = ["A vs B", "Δ loss (A - B)", f"{ci} window bootstrap", "Δ bits/char", f"{ci} window bootstrap",
              "bootstrap p", *(["Holm p"] * holm), *([f"Δ loss over seeds, {ci} t"] * over), "verdict"]
    pair_rows = []
    for p in pairs:
        name = f"{p['a']} vs {p['b']}"
        if p["p_value"] is None:
            pair_rows.append([name, *["-"] * (len(header) - 2), p["verdict"]])
            continue
        row = [name, f"{p['difference']:+.4f}", "[{:+.4f}, {:+.4f}]".format(*p["interval"]),
               f"{p['bits_difference']:+.4f}", "[{:+.4f}, {:+.4f}]".format(*p["bits_interval"]),
               format_p(p["p_value"]).removeprefix("= ")]
        if holm:
            row.append(format_p(p["p_holm"]).removeprefix("= "))
        if over:
            o = p["over_seeds"]
            row.append("-" if not o else f"{o['mean']:+.4f} ± {o['std']:.4f} "
                       f"[{o['t_interval'][0]:+.4f}, {o['t_interval'][1]:+.4f}]")
        pair_rows.append([*row, p["verdict"]])
    pair_table = format_table(header, pair_rows, markdown=markdown) if pair_rows else ""
    notes = _text_notes(result, holm)
    if markdown:
        return ("# compare\n\n" + table + ("\n\n" + pair_table if pair_table else "") + "\n\n"
                + "\n".join(f"- {n}" for n in notes))
    return table + ("\n\n" + pair_table if pair_table else "") + "\n" + "\n".join(f"# {n}" for n in notes)


def _text_notes(result: dict[str, Any], holm: bool) -> list[str]:
    split, seeds = result["test_split"], result["seeds"]
    ci = f"{100 * CONFIDENCE:g} %"
    batch = next((r["infer_batch"] for r in result["runs"] if r.get("infer_batch") is not None), "-")
    notes = [
        f"seeds {seeds}; ± is the sample std (ddof=1) over the seeds that finished, and val loss {ci} the "
        "t-interval of the mean over them (how much a recipe's loss moves when it is trained again; a model "
        "scored from --checkpoint: the window bootstrap)" if len(seeds) > 1 else
        f"seed {seeds[0]}; val loss {ci}: the percentile bootstrap over the validation windows (how sure the "
        "figure is given this text; training again moves it too)",
        f"val loss (nats per character), bits/char, perplexity, token acc: harness.evaluate's per-token figures "
        f"(best.pt, else last.pt) over the whole validation text, every model on the same {split['samples']} "
        f"windows of {split['block_size']} characters (sha256 {split['sha256'][:12]}). text_chars has no test "
        "split: validation during training scored a fixed subset of these windows (trainer.limit_val_batches) "
        "and chose best.pt by it, so this is not a test independent of that choice",
        f"FLOPs/window: FlopCounterMode, one forward pass of one window of {split['block_size']} characters "
        f"(matmuls; 2 per multiply-add); infer tokens/s at batch {batch} windows = windows/s x block_size; "
        f"latency p50 / p95 at batch 1 window (harness.core.speed, on {result['device']})",
        f"peak mem: {result['memory']}",
    ]
    notes += [f"failed: {r['model']}" + (f" seed {r['seed']}" if r["seed"] is not None else "") + f": {r['error']}"
              for r in result["failed"]]
    tested = [p for p in result["pairs"] if p["p_value"] is not None]
    if tested:
        notes.append(
            f"pairs: both models on the same {tested[0]['windows']} validation windows ({tested[0]['characters']} "
            "characters); Δ loss = sum over windows of (NLL_A - NLL_B) / characters, below 0 when A predicts "
            f"better; its {ci} interval and p: paired percentile bootstrap over the windows ({RESAMPLES} "
            f"resamples, seed {BOOTSTRAP_SEED}; p = 2 x the smaller share of resampled Δ on either side of 0, "
            f"resolution 1/{RESAMPLES}). The window is the resampling unit because neighbouring characters share "
            "their context and are not independent: a per-character test (McNemar, a bootstrap over characters) "
            "would overstate the evidence")
        notes.append(f"Holm p: the bootstrap p adjusted by Holm's step-down method over the {len(tested)} pairs; "
                     f"the verdict says 'better' when it is at most {ALPHA} and the interval excludes 0"
                     if holm else f"one pair: no correction for multiple tests; the verdict says 'better' when p "
                     f"is at most {ALPHA} and the interval excludes 0, else 'no clear difference'")
        if len(seeds) > 1:
            used = sorted({str(p["seed_a"]) for p in tested if p["seed_a"] is not None})
            notes.append("with several seeds the window bootstrap compares one model per recipe, that of the first "
                         f"seed both finished (seed {', '.join(used) or '-'}); 'Δ loss over seeds' is how the "
                         "difference moves when both are trained again: mean ± sample std and t-interval of the "
                         "per-seed differences")
    if len(result["runs"]) < result["planned"]:
        notes.append(f"{len(result['runs'])} of {result['planned']} runs finished so far")
    return notes
