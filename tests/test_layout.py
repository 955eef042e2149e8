"""The house rules of the tree: imports point one way (ops <- detr2d <- bev), the runtime is a leaf that
imports no detector, datasets and configs stand apart from the models, and one vocabulary."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ops", "detr2d", "bev", "datasets", "configs", "tools")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import statement of ``path`` (relative ones resolved)."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found += [
                (node.lineno, f"{module}.{alias.name}" if not node.module else module) for alias in node.names
            ]
    return found


def first_party(module: str) -> str | None:
    top = module.split(".")[0]
    return top if top in PACKAGES else None


def violations(
    folder: str,
    allowed: set[str],
    allowed_prefixes: tuple[str, ...] = (),
    exact: frozenset[str] = frozenset(),
) -> list[str]:
    """Imports of first-party modules under ``folder`` outside the ``allowed`` packages, the
    ``allowed_prefixes`` and the ``exact`` module names."""
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for line, module in imported_modules(path):
            top = first_party(module)
            if top is None or top in allowed or module.startswith(allowed_prefixes) or module in exact:
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


def test_imports_point_one_way() -> None:
    """ops imports no detector; detr2d no BEV; datasets and configs no model and no op."""
    assert violations("ops", {"ops"}) == []
    assert violations("detr2d", {"ops", "detr2d", "datasets", "configs"}) == []
    assert violations("datasets", {"datasets"}) == []
    assert violations("configs", {"configs"}) == []


def test_runtime_import_lines_name_no_detector_module() -> None:
    """The runtime imports torch, ops, configs and itself only (and ``datasets`` bare, to check that it is
    ours and not a namesake); the shared layers import no detector (the runtime's checkpoint reading)."""
    runtime = violations("detr2d/runtime", {"ops", "configs"}, ("detr2d.runtime",), frozenset({"datasets"}))
    assert runtime == []
    assert violations("detr2d/layers", {"ops"}, ("detr2d.layers", "detr2d.runtime")) == []


def test_importing_the_runtime_loads_no_detector() -> None:
    """``import detr2d.runtime.fit`` (and the tools' driver) loads no detector module: detr2d's names
    are imported on first use."""
    code = (
        "import sys; import detr2d.runtime.fit, detr2d.runtime.evaluate, detr2d.runtime.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('detr2d', 'bev') "
        "and not m.startswith(('detr2d.runtime', 'detr2d.layers')) and m != 'detr2d'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_lazy_names_of_detr2d_resolve() -> None:
    import detr2d

    for name in detr2d.__all__:
        assert getattr(detr2d, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        detr2d.nope  # noqa: B018


OLD_WORDS = (
    r"\b(d_model|nhead|n_heads|n_levels|n_points|num_feature_levels|dim_feedforward|msda_backend|num_query"
    r"|op_backend|d_ffn)\b"
)


def test_one_vocabulary() -> None:
    """No Python file outside tests uses the second vocabulary (the official state_dict keys are data,
    not code, and keep their names); a line that maps an old name for old checkpoints says "old name"."""
    bad = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(OLD_WORDS, line) and "old name" not in line:
                    bad.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert bad == []
