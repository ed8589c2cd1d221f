"""Stress check: do torchrun jobs end cleanly, every time?

Runs `python -m harness.train` and `python -m harness.evaluate` under torchrun on 2 CPU ranks (Gloo),
N times each, and counts the runs that exit 0 *and* wrote their files (train: summary.json and
checkpoints/best.pt; evaluate: eval-best-test.json). A rank that aborts while Python shuts down
(the failure this guards against: `terminate called without an active exception`) makes torchrun
stop the job with exit code 1, often before rank 0 has written its report.

    HARNESS_DATA_DIR=../shared/data python benchmarks/torchrun_teardown.py            # 20 of each
    python benchmarks/torchrun_teardown.py --runs 5 --data-root ../shared/data

Prints one line per run and the totals; exits 1 if any run failed. Takes about 10 s a run on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Small and quick: the point is the start and the end of the job, not the training.
COMMON = ["data.train_size=2000", "data.val_size=500", "trainer.progress=false"]


def torchrun(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # --standalone: torchrun picks a free port itself (a port found free here could be taken before it binds)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", module, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of each command (default 20)")
    parser.add_argument("--data-root", default=os.environ.get("HARNESS_DATA_DIR"),
                        help="folder holding MNIST/raw (default: $HARNESS_DATA_DIR)")
    args = parser.parse_args(argv)
    if not args.data_root or not (Path(args.data_root) / "MNIST").is_dir():
        print("error: give --data-root (or HARNESS_DATA_DIR): a folder with MNIST/raw/*-ubyte", file=sys.stderr)
        return 2
    env = {**os.environ, "HARNESS_DATA_DIR": str(Path(args.data_root).resolve()), "OMP_NUM_THREADS": "1"}
    failures = {"train": 0, "evaluate": 0}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(1, args.runs + 1):
            runs = Path(tmp) / f"runs-{i}"
            started = time.perf_counter()
            trained = torchrun("harness.train", "recipes/mnist_mlp.yaml", "trainer.epochs=1", *COMMON,
                               f"logging.root={runs}", env=env)
            folders = list(runs.glob("*/*/summary.json"))
            train_ok = trained.returncode == 0 and len(folders) == 1 and \
                (folders[0].parent / "checkpoints" / "best.pt").is_file()
            failures["train"] += not train_ok
            line = f"run {i:2d}: train rc={trained.returncode} files={'yes' if train_ok else 'NO'}"
            if folders:
                best = folders[0].parent / "checkpoints" / "best.pt"
                evaluated = torchrun("harness.evaluate", "recipes/mnist_mlp.yaml", "--checkpoint", str(best),
                                     *COMMON, env=env)
                report = folders[0].parent / "eval-best-test.json"
                eval_ok = evaluated.returncode == 0 and report.is_file()
                line += f"  evaluate rc={evaluated.returncode} files={'yes' if eval_ok else 'NO'}"
                if not eval_ok:
                    line += "\n" + evaluated.stderr[-1500:]
            else:
                eval_ok = False
                line += "  evaluate: not run (no checkpoint)\n" + trained.stderr[-1500:]
            failures["evaluate"] += not eval_ok
            print(f"{line}  ({time.perf_counter() - started:.1f} s)", flush=True)
    for command, failed in failures.items():
        print(f"{command}: {args.runs - failed} of {args.runs} exited 0 and wrote their files")
    return 1 if any(failures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
