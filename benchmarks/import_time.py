"""What importing the harness costs on top of torch, in fresh interpreters.

    python benchmarks/import_time.py            # median of 11 fresh processes per statement
    python benchmarks/import_time.py -n 21 --json import_time.json

Each statement runs in a new `python -c` process (no module is cached across runs), round-robin
over the statements so a busy spell of the machine hits them alike; the wall time of the whole
process is taken, so interpreter start-up is in every figure and cancels in the differences.
It also checks that `python -m harness.train --help` does not import torch (`-X importtime`).
Targets: `import harness` + touching `harness.Trainer` adds <= 0.3 s to `import torch`; `--help` loads no torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

STATEMENTS = {
    "python (start-up only)": "pass",
    "import torch": "import torch",
    "import torch, harness; harness.Trainer": "import torch, harness; harness.Trainer",
    "from harness.train import main": "from harness.train import main",
    "import harness.recipe.parts (all parts of a run)": "import harness.recipe.parts",
}
OPTIONAL = {"import lightning": "lightning", "import ignite.engine": "ignite"}
TARGET_S = 0.3


def time_once(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


def help_imports_torch() -> bool:
    """Whether `python -m harness.train --help` imports torch (or any torch submodule)."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "harness.train", "--help"],
                         capture_output=True, text=True, check=True)
    # -X importtime writes "import time: self | cumulative | module" lines to stderr, one per module
    modules = [line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")]
    return any(m == "torch" or m.startswith("torch.") for m in modules)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=11, help="fresh processes per statement (default 11)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    statements = dict(STATEMENTS)
    statements.update({label: label for label, module in OPTIONAL.items() if importlib.util.find_spec(module)})
    for code in statements.values():
        time_once(code)  # untimed: fills the OS file cache, so the first statement is not penalised
    times: dict[str, list[float]] = {label: [] for label in statements}
    for r in range(args.runs):
        labels = list(statements)
        for label in labels[r % len(labels):] + labels[: r % len(labels)]:
            times[label].append(time_once(statements[label]))

    medians = {label: statistics.median(t) for label, t in times.items()}
    torch_s = medians["import torch"]
    print(f"python {sys.version.split()[0]}, {args.runs} fresh processes per statement, medians:\n")
    print("| statement | median [s] | vs `import torch` [s] |\n|---|---:|---:|")
    for label, median in medians.items():
        print(f"| `{label}` | {median:.3f} | {median - torch_s:+.3f} |")
    added = medians["import torch, harness; harness.Trainer"] - torch_s
    no_torch = not help_imports_torch()
    print(f"\nimport harness + harness.Trainer adds {added:.3f} s to import torch "
          f"(target <= {TARGET_S} s: {'met' if added <= TARGET_S else 'NOT met'})")
    print(f"python -m harness.train --help imports torch: {'no' if no_torch else 'YES'} (target: no)")
    if args.json is not None:
        record = {"runs": times, "medians": medians, "help_imports_torch": not no_torch}
        args.json.write_text(json.dumps(record, indent=2))
    return 0 if added <= TARGET_S and no_torch else 1


if __name__ == "__main__":
    sys.exit(main())
