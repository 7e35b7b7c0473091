"""The package's shape: one namespace, no import circles, layers that import downward only.

Every import counts, at module level or inside a function (a function-level import does not hide a circle).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]

# A subpackage may import from subpackages of a lower rank only (and from itself).
RANKS = {
    "core": 0,
    "data": 1,
    "generator": 2,
    "prototypes": 3,
    "captioning": 4,
    "synthesis": 5,
    "evaluate": 5,
    "peers": 6,  # above synthesis, whose refinement every peer reuses
    "export": 6,
    "pipeline": 7,
    "cli": 8,
    "__main__": 9,
}
OLD_NAMES = ("distill", "prototypes", "captioning", "evaluate")


def package_dirs() -> dict[str, Path]:
    """`rsdistill...` package name -> folder, as pyproject.toml maps them."""
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {name: ROOT / folder for name, folder in settings["package-dir"].items()}


def modules() -> dict[str, Path]:
    """Every module the distribution installs, by its dotted name."""
    dirs = package_dirs()
    found: dict[str, Path] = {}
    for package, folder in dirs.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            # A folder mapped on its own (rsdistill.evaluate) is not also a child of its parent's folder.
            owner = max((p for p in dirs if name == p or name.startswith(p + ".")), key=len)
            if owner == package:
                found[name] = path
    return found


def imported(path: Path, module: str, known: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """The modules `path` imports anywhere in its body. ``from X import y`` counts as X.y when that is a module
    in `known`, else as X."""
    names: list[str] = []
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names += [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix for a in node.names]
    return names


def graph() -> dict[str, set[str]]:
    known = modules()
    return {
        name: {t for t in imported(path, name, set(known)) if t in known and t != name}
        for name, path in known.items()
    }


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_is_in_the_rsdistill_namespace() -> None:
    known = modules()
    assert "rsdistill.cli.main" in known and "rsdistill.evaluate.protocol" in known
    assert all(name == "rsdistill" or name.startswith("rsdistill.") for name in known)
    for name, path in known.items():
        stale = [t for t in imported(path, name) if t.split(".")[0] in OLD_NAMES]
        assert not stale, f"{path} imports {stale}: project code is imported as rsdistill.<...>"


def test_no_import_circles() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                circle = [*stack[stack.index(target):], target]
                pytest.fail("import circle: " + " -> ".join(circle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_layers_import_downward_only() -> None:
    upward = []
    for source, targets in graph().items():
        if source == "rsdistill":
            assert not targets, "the package root imports nothing (import rsdistill stays cheap)"
            continue
        for target in targets:
            if target == "rsdistill":
                continue
            a, b = layer(source), layer(target)
            if a != b and RANKS[b] >= RANKS[a]:
                upward.append(f"{source} -> {target}")
    assert not upward, "imports that go up or sideways between layers:\n" + "\n".join(sorted(upward))


def test_every_subpackage_has_a_rank() -> None:
    assert {layer(name) for name in modules() if name != "rsdistill"} == set(RANKS)


def test_scripts_do_not_import_tests() -> None:
    for path in sorted((ROOT / "scripts").rglob("*.py")):
        offenders = [t for t in imported(path, path.stem) if t == "tests" or t.startswith("tests.")]
        assert not offenders, f"{path} imports {offenders}"


def test_installed_namespace_leaves_other_packages_alone(tmp_path: Path) -> None:
    """From a folder outside the checkout: `rsdistill` imports, the old top-level names do not exist, and a
    Hugging Face `evaluate` installed beside it is the one `import evaluate` gives."""
    code = (
        "import importlib.util, rsdistill, rsdistill.evaluate, rsdistill.prototypes\n"
        "print(rsdistill.__version__)\n"
        "print(sorted(n for n in ('distill', 'captioning') if importlib.util.find_spec(n)))\n"
        "spec = importlib.util.find_spec('evaluate')\n"
        "print(spec.origin if spec else None)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    version, leaked, evaluate_origin = result.stdout.splitlines()
    assert version and leaked == "[]"
    if evaluate_origin != "None":
        assert Path(evaluate_origin).parent != ROOT / "evaluate", evaluate_origin
        hf = subprocess.run([sys.executable, "-c", "import evaluate; print(callable(evaluate.load))"],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
        assert hf.stdout.strip() == "True", hf.stderr
