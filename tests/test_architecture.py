"""The layers hold: `lint-imports` keeps the import contracts of pyproject.toml (commands -> workflows
-> recipe -> core -> data / metrics, no command importing another, no cycles), and every import
written inside a function carries its reason (ruff's PLC0415 with a `noqa` that says why)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO
from hang_guard import HANG_GUARD_S

COMMANDS = ("train", "evaluate", "cv", "compare", "sweep", "lr_find", "export", "compress", "sample")


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_S)


def test_import_contracts_are_kept() -> None:
    result = _run(str(Path(sys.executable).with_name("lint-imports")), "--no-cache")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_every_import_inside_a_function_is_flagged_or_explained() -> None:
    result = _run(sys.executable, "-m", "ruff", "check", "--select", "PLC0415", "--output-format", "concise",
                  "harness", "models")
    assert result.returncode == 0, result.stdout[-3000:]
    for path in (REPO / "harness").rglob("*.py"):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines, start=1):
            if "noqa: PLC0415" not in line:
                continue
            # The reason: in parentheses after the noqa, or a comment just above this block of imports.
            above = number - 2
            while above >= 0 and (lines[above].strip().startswith(("from ", "import ", ")"))
                                  or lines[above].strip().endswith(",")):
                above -= 1
            explained = "(" in line.split("noqa: PLC0415", 1)[1] or lines[above].strip().startswith("#")
            assert explained, f"{path.relative_to(REPO)}:{number}: an import inside a function without its reason"

def test_the_top_of_the_package_holds_the_commands_and_their_helpers_only() -> None:
    top = {p.stem for p in (REPO / "harness").glob("*.py")}
    assert top == {"__init__", "cli", "errors", *COMMANDS}
    for command in COMMANDS:
        source = (REPO / "harness" / f"{command}.py").read_text()
        assert 'if __name__ == "__main__":' in source
        imported = {node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)}
        others = {f"harness.{c}" for c in COMMANDS} - {f"harness.{command}"}
        assert not imported & others, f"harness/{command}.py imports another command: {imported & others}"
