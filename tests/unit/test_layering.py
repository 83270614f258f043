"""Imports run downward only: doors -> engine clients -> engine / inputs / reasoning -> models -> layers -> kernels
-> config (docs/ARCHITECTURE.md draws the same stack). A package may import its own level and any level below.

Imports under `if TYPE_CHECKING:` are annotations only and do not count; the `glmv` package's own `__init__`
(which resolves `glmv.LLM` lazily) is the façade above everything and is not checked."""

from __future__ import annotations

import ast
from pathlib import Path

import glmv

ROOT = Path(glmv.__file__).parent

LEVELS = {
    "cli": 6, "server": 6, "llm": 6, "ui": 6,
    "backends": 5,
    "engine": 4, "inputs": 4, "reasoning": 4, "structured": 4, "tools": 4, "sampling": 4,
    "models": 3,
    "layers": 2,
    "kernels": 1, "cpu": 1,
    "config": 0, "options": 0, "templates": 0, "lru": 0,
}


def _package_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def _imported_packages(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, top-level glmv package) of every import outside `if TYPE_CHECKING:` blocks."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "glmv" and len(parts) > 1:
                    found.append((node.lineno, parts[1]))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "glmv" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
            elif parts == ["glmv"]:  # `from glmv import kernels`: a subpackage; `__version__`: the façade's constant
                found.extend((node.lineno, a.name) for a in node.names if a.name in LEVELS)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def test_every_package_has_a_level():
    packages = {_package_of(p) for p in ROOT.rglob("*.py") if p.parent != ROOT or p.name != "__init__.py"}
    assert packages <= set(LEVELS), f"give these a level in LEVELS: {sorted(packages - set(LEVELS))}"


def test_imports_only_run_downward():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        if path == ROOT / "__init__.py":
            continue
        here = _package_of(path)
        for line, target in _imported_packages(ast.parse(path.read_text(), str(path))):
            if target in LEVELS and LEVELS[target] > LEVELS[here]:
                upward.append(f"{path.relative_to(ROOT.parent)}:{line} ({here}) imports glmv.{target}")
    assert not upward, "imports running up:\n" + "\n".join(upward)


def test_glmv_environment_is_read_in_the_options_module_only():
    """Every GLMV_* variable is read in glmv/options.py. The vLLM worker runs in vLLM's Python without glmv on its
    path, so it reads its handshake token itself."""
    import re

    allowed = {ROOT / "options.py", ROOT / "backends" / "vllm_worker.py"}
    reads = re.compile(r"(environ\.(get|pop)\(|environ\[|getenv\()\s*[\"']GLMV_")
    found = [f"{p.relative_to(ROOT.parent)}:{i}" for p in sorted(ROOT.rglob("*.py")) if p not in allowed
             for i, line in enumerate(p.read_text().splitlines(), 1) if reads.search(line)]
    assert not found, "GLMV_* read outside glmv/options.py:\n" + "\n".join(found)
