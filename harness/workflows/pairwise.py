"""Is one model better than another on the same test samples? The pairwise part of `harness.compare`.

For every pair of models (A, B), in the order the recipes were given, from each one's per-sample
correctness on the same test samples (bool tensors on the device, in the test split's order):

- the accuracy difference A - B and its paired percentile-bootstrap interval (`paired_difference_ci`:
  both models scored on the same resampled samples, 1,000 resamples, seed 0);
- McNemar's exact test (`mcnemar_test`): on the samples where exactly one of the two is right, is
  each as likely to be the one? A two-sided p-value;
- with more than two models, the p-values of all pairs tested are adjusted by Holm's step-down
  method (`holm_adjust`), so that "some pair differs" is said by luck at most 5 % of the time;
- a verdict: "B better, p < 0.001" when the (adjusted) p-value is at most 0.05, else
  "no significant difference (p = 0.41)".

These answer one question: given these trained models, how sure is the difference, over the
sampling of the test set? Training the recipes again with other seeds is another question.
With `--seeds`, the test above compares the models of the first seed both recipes finished (the
same pre-chosen pair every time, never the best of several), because pooling every seed's models into
one McNemar test would count each test sample once per seed, as if the test set were that many times
larger and independent. The seeds then answer the other question: the difference of the two
recipes' accuracies seed by seed (paired by seed: the same split, data order and seed), its mean ±
sample std and 95 % t-interval over the seeds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from harness.stats import holm_adjust, mcnemar_test, paired_difference_ci, t_interval

ALPHA = 0.05  # the level a verdict calls significant: an adjusted p-value at most this
CONFIDENCE = 0.95  # of the bootstrap and t intervals
RESAMPLES = 1000  # bootstrap resamples (seed 0): the interval's ends move by ~0.1 % of its width between seeds
BOOTSTRAP_SEED = 0


def pairwise(labels: Sequence[str], correct: Mapping[str, Mapping[int | None, Tensor]],
             seeds: Sequence[int]) -> list[dict[str, Any]]:
    """One dict per pair of `labels` (A before B, as given): the accuracy difference, its interval, McNemar's
    p-value, Holm's adjusted p-value and the verdict (see the module docstring).

    `correct[label][seed]`: that model's per-sample correctness on the test split, for each seed whose run
    finished; a given checkpoint has the single key None and pairs with any seed. A pair of which one
    model has no finished run is listed, with a verdict saying so, and left out of the Holm family.
    """
    pairs = []
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            pairs.append(_pair(a, b, correct.get(a, {}), correct.get(b, {}), seeds))
    tested = [p for p in pairs if p["p_value"] is not None]
    for pair, adjusted in zip(tested, holm_adjust([p["p_value"] for p in tested]), strict=True):
        pair["p_holm"] = adjusted
        pair["significant"] = adjusted <= ALPHA
        pair["verdict"] = verdict(pair["a"], pair["b"], pair["difference"], adjusted)
    for pair in pairs:
        pair["holm_family"] = len(tested)
    return pairs


def _pair(a: str, b: str, runs_a: Mapping[int | None, Tensor], runs_b: Mapping[int | None, Tensor],
          seeds: Sequence[int]) -> dict[str, Any]:
    pair: dict[str, Any] = {"a": a, "b": b, "seed_a": None, "seed_b": None, "samples": None, "acc_a": None,
                            "acc_b": None, "difference": None, "interval": None, "only_a_right": None,
                            "only_b_right": None, "p_value": None, "p_holm": None, "significant": None,
                            "verdict": None, "over_seeds": None}
    chosen = next(((sa, sb) for s in seeds if (sa := _run_for(runs_a, s)) is not _MISSING
                   and (sb := _run_for(runs_b, s)) is not _MISSING), None)
    if chosen is None:
        missing = a if not runs_a else b if not runs_b else f"{a} and {b} (no seed finished for both)"
        pair["verdict"] = f"not compared: {missing} has no finished run"
        return pair
    seed_a, seed_b = chosen
    ca, cb = runs_a[seed_a], runs_b[seed_b]
    n = ca.shape[0]
    right_a, right_b = int(ca.sum()), int(cb.sum())  # one host sync each: once per pair, after the passes
    only_a, only_b = int((ca & ~cb).sum()), int((cb & ~ca).sum())
    low, high = paired_difference_ci(ca, cb, n_resamples=RESAMPLES, confidence=CONFIDENCE, seed=BOOTSTRAP_SEED)
    pair.update(seed_a=seed_a, seed_b=seed_b, samples=n, acc_a=right_a / n, acc_b=right_b / n,
                difference=(right_a - right_b) / n, interval=[low, high], only_a_right=only_a, only_b_right=only_b,
                p_value=mcnemar_test(ca, cb))
    common = [s for s in seeds if s in runs_a and s in runs_b]
    if len(common) >= 2:  # the other question: how the difference moves from seed to seed
        differences = [float(runs_a[s].double().mean() - runs_b[s].double().mean()) for s in common]
        pair["over_seeds"] = {"seeds": common, "differences": differences, "mean": statistics.fmean(differences),
                              "std": statistics.stdev(differences),
                              "t_interval": [*t_interval(differences, CONFIDENCE)]}
    return pair


_MISSING = object()


def _run_for(runs: Mapping[int | None, Tensor], seed: int) -> Any:
    """The key of the run to pair for `seed`: that seed's run, a checkpoint's single run (None), or _MISSING."""
    if seed in runs:
        return seed
    return None if None in runs else _MISSING


def format_p(p: float) -> str:
    """A p-value as read in a verdict: '< 0.001', else '= ' and two significant digits ('= 0.041', '= 1')."""
    return "< 0.001" if p < 0.001 else f"= {p:.2g}"


def verdict(a: str, b: str, difference: float, p: float) -> str:
    """'<better> better, p < 0.001' when `p` (adjusted) is at most ALPHA, else 'no significant difference (p = ..)'."""
    if p <= ALPHA and difference != 0:
        return f"{a if difference > 0 else b} better, p {format_p(p)}"
    return f"no significant difference (p {format_p(p)})"


def pairs_table_rows(pairs: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the pairwise table (Holm's column only when more than one pair was tested)."""
    holm = any(p["holm_family"] > 1 for p in pairs)
    seeds = any(p["over_seeds"] for p in pairs)
    header = ["A vs B", "Δ acc (A - B)", f"{100 * CONFIDENCE:g} % paired bootstrap", "only A right",
              "only B right", "McNemar p", *(["Holm p"] * holm), *([f"Δ over seeds, {100 * CONFIDENCE:g} % t"] * seeds),
              "verdict"]
    rows = []
    for p in pairs:
        name = f"{p['a']} vs {p['b']}"
        if p["p_value"] is None:
            rows.append([name, *["-"] * (len(header) - 2), p["verdict"]])
            continue
        low, high = p["interval"]
        row = [name, f"{p['difference']:+.4f}", f"[{low:+.4f}, {high:+.4f}]", str(p["only_a_right"]),
               str(p["only_b_right"]), _p_cell(p["p_value"])]
        if holm:
            row.append(_p_cell(p["p_holm"]))
        if seeds:
            over = p["over_seeds"]
            row.append("-" if not over else f"{over['mean']:+.4f} ± {over['std']:.4f} "
                       f"[{over['t_interval'][0]:+.4f}, {over['t_interval'][1]:+.4f}]")
        rows.append([*row, p["verdict"]])
    return header, rows


def _p_cell(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3g}" if not math.isnan(p) else "-"


def pairs_notes(pairs: Sequence[dict[str, Any]], seeds: Sequence[int]) -> list[str]:
    """What the pairwise table's columns mean, in words."""
    tested = [p for p in pairs if p["p_value"] is not None]
    if not tested:
        return []
    n = tested[0]["samples"]
    notes = [f"pairs: both models on the same {n} test samples; Δ acc and its {100 * CONFIDENCE:g} % interval: "
             f"paired percentile bootstrap over the test samples ({RESAMPLES} resamples, seed {BOOTSTRAP_SEED}); "
             "McNemar p: exact two-sided binomial test on the samples only one of the two gets right"]
    if len(tested) > 1:
        notes.append(f"Holm p: McNemar's p adjusted by Holm's step-down method over the {len(tested)} pairs tested; "
                     f"the verdict says 'better' when it is at most {ALPHA}")
    else:
        notes.append(f"one pair: no correction for multiple tests; the verdict says 'better' when p is at most "
                     f"{ALPHA}")
    if len(seeds) > 1:
        used = sorted({str(p["seed_a"]) for p in tested if p["seed_a"] is not None})
        notes.append(f"with several seeds the pairwise test compares one model per recipe, that of the first seed "
                     f"both finished (seed {', '.join(used) or '-'}): pooling the seeds' models into one test would "
                     "count each test sample once per seed. 'Δ over seeds' is the other question, how the difference "
                     "moves when both recipes are trained again: mean ± sample std and t-interval of the per-seed "
                     "differences")
    return notes
