"""The package's shape: what the wheel ships, how big a module may grow, what it may reach for."""

import ast
import tomllib

from helpers import REPO

BACKEND = REPO / "backend"
PACKAGE = BACKEND / "qspan"
MAX_MODULE_LINES = 300
DATA_PACKAGES = {"qspan.tracers": "tracers", "qspan.frontend": "frontend"}  # outside backend/, see pyproject.toml


def _data_packages() -> set[str]:
    """The data packages and their subfolders: each must be listed, or setuptools ships it only by a deprecated fallback."""
    out = set(DATA_PACKAGES)
    for pkg, folder in DATA_PACKAGES.items():
        out |= {pkg + "." + ".".join(d.relative_to(REPO / folder).parts)
                for d in (REPO / folder).rglob("*") if d.is_dir() and d.name != "__pycache__"}
    return out


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_wheel_lists_every_package():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = setuptools["packages"]
    assert len(listed) == len(set(listed)), f"listed twice: {sorted({p for p in listed if listed.count(p) > 1})}"
    found = {".".join(d.relative_to(BACKEND).parts) for d in (i.parent for i in PACKAGE.rglob("__init__.py"))}
    want = found | _data_packages()
    assert set(listed) == want, (f"pyproject.toml [tool.setuptools] packages: missing {sorted(want - set(listed))}, "
                                 f"not a package {sorted(set(listed) - want)}")
    for pkg, folder in DATA_PACKAGES.items():
        assert setuptools["package-dir"][pkg] == folder and (REPO / folder).is_dir(), pkg


def test_no_module_is_over_300_lines():
    sizes = {p.relative_to(REPO).as_posix(): len(p.read_text().splitlines()) for p in _modules()}
    over = {m: n for m, n in sorted(sizes.items(), key=lambda kv: -kv[1]) if n > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines (split them by stage): " + ", ".join(
        f"{m} ({n})" for m, n in over.items())


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring constants: what they say is prose, not code."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def _reaches_outside(text: str, name: str) -> list[str]:
    """What in one module imports the lab or finds files relative to the source tree instead of as package data."""
    tree = ast.parse(text, name)
    prose = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: imports {a.name}" for a in node.names if a.name.split(".")[0] == "qspanlab"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "qspanlab":
            found.append(f"{where}: imports from {node.module}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            if "QSPAN_HOME" in node.value:
                found.append(f"{where}: reads QSPAN_HOME")
            if node.value.split(".")[0] == "qspanlab":
                found.append(f"{where}: names the module {node.value!r}")
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "parents":
            found.append(f"{where}: .parents[...]")
        elif isinstance(node, ast.Attribute) and node.attr == "parent" and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "parent":
            found.append(f"{where}: .parent.parent")
        elif isinstance(node, ast.Name) and node.id == "__file__":
            found.append(f"{where}: __file__")
    return sorted(found, key=lambda f: int(f.split(":")[1]))


def test_the_package_needs_no_checkout_and_no_lab():
    """Data files come from importlib.resources (qspan/resources.py); the lab and test harness stay outside."""
    found = [f for p in _modules() for f in _reaches_outside(p.read_text(), p.relative_to(REPO).as_posix())]
    assert not found, "backend/qspan reaches outside the installed package:\n" + "\n".join(found)


def test_the_outside_check_sees_what_it_should():
    module = (
        '"""Needs no QSPAN_HOME (prose, not code)."""\n'
        "import importlib, os\n"
        "from pathlib import Path\n"
        "import qspanlab.lab\n"
        "from qspanlab import harness\n"
        "ROOT = Path(__file__).resolve().parents[2]\n"
        "UP = Path('x').parent.parent\n"
        "HOME = os.environ.get('QSPAN_HOME')\n"
        "LAB = importlib.import_module('qspanlab.cli')\n"
    )
    assert [f.split(":", 1)[1] for f in _reaches_outside(module, "m.py")] == [
        "4: imports qspanlab.lab", "5: imports from qspanlab", "6: .parents[...]", "6: __file__",
        "7: .parent.parent", "8: reads QSPAN_HOME", "9: names the module 'qspanlab.cli'",
    ]
