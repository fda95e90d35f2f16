"""The package layering (README, "Layout"), read from the source: library imports point only down
``stylegan`` -> ``detector`` -> ``cases``; the front doors (the ``stylegan/cli/`` and ``detector/cli/`` packages) sit on
top, may import every library package, and are imported by nothing outside themselves. Every import counts,
also those inside functions."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"stylegan": 0, "detector": 1, "cases": 2}
FRONT_DOORS = ("stylegan.cli", "detector.cli")


def _modules(root: Path) -> Dict[str, Path]:
    """Dotted module name -> file, for every module of the library packages under ``root``."""
    out = {}
    for pkg in LAYERS:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def front_door(module: str) -> Optional[str]:
    """The front door a module belongs to, or None for library modules."""
    for door in FRONT_DOORS:
        if module == door or module.startswith(door + "."):
            return door
    return None


def _imports(module: str, path: Path, known: Dict[str, Path]) -> Iterator[Tuple[int, str]]:
    """(line, imported module) for every import of one of our packages in a file, relative ones resolved."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from pkg import module` imports the module
                sub = f"{target}.{alias.name}"
                yield node.lineno, sub if sub in known else target


def layering_violations(root: Path = ROOT) -> List[str]:
    known = _modules(root)
    problems = []
    for module, path in known.items():
        src_door = front_door(module)
        src_layer = LAYERS[module.split(".")[0]]
        for line, target in _imports(module, path, known):
            top = target.split(".")[0]
            if top not in LAYERS:
                continue
            where = f"{path.relative_to(root)}:{line} imports {target}"
            dst_door = front_door(target)
            if dst_door is not None and dst_door != src_door:
                problems.append(f"{where}: a front door is imported by nothing outside itself")
            elif src_door is None and LAYERS[top] > src_layer:
                problems.append(f"{where}: upward import ({module.split('.')[0]} sits below {top})")
    return problems


def test_library_imports_point_down_and_nothing_imports_a_front_door():
    problems = layering_violations()
    assert not problems, "layering broken:\n" + "\n".join(problems)


def _tree(tmp_path: Path, files: Dict[str, str]) -> Path:
    for pkg in LAYERS:
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    for name, text in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return tmp_path


def test_the_check_catches_upward_and_front_door_imports(tmp_path):
    root = _tree(tmp_path, {
        "stylegan/ops.py": "def f():\n    from detector import projector\n",     # upward, inside a function
        "detector/projector.py": "from cases.store import Case\n",               # upward, at the top
        "detector/check.py": "from .cli import app\n",                            # a library module -> front door
        "detector/cli/__init__.py": "from cases import store\nfrom stylegan.cli import app\n",  # door -> other door
        "cases/store.py": "from detector.projector import Projector\nfrom stylegan import ops\n",  # fine: downward
        "stylegan/cli/__init__.py": "from cases import store\n",                  # fine: a front door
    })
    problems = layering_violations(root)
    assert len(problems) == 4, problems
    joined = "\n".join(problems)
    assert "stylegan/ops.py:2 imports detector.projector: upward import" in joined
    assert "detector/projector.py:1 imports cases.store: upward import" in joined
    assert "detector/check.py:1 imports detector.cli: a front door" in joined
    assert "detector/cli/__init__.py:2 imports stylegan.cli: a front door" in joined
