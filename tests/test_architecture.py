"""docs/architecture.md's module table agrees with the code: every module is listed, its bottleneck
dependencies and its libraries are the real imports, and no module imports one listed below it."""

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bottleneck"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _internal_name(parts: list[str], modules: set[str]) -> str | None:
    """["sources", "raw", "RawSource"] -> "sources.raw"; [] or ["__version__"] (the package) -> None."""
    while parts and ".".join(parts) not in modules:
        parts = parts[:-1]
    return ".".join(parts) or None


def real_imports(path: Path, modules: set[str], name: str) -> tuple[set[str], set[str], set[str]]:
    """(package modules that module `name` uses anywhere, libraries it imports at load time, libraries it
    imports in functions only). The package imports itself relatively: it installs as bottleneck_features."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    internal: set[str] = set()
    loaded: set[str] = set()
    lazy: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # annotations only
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            libraries: list[str] = []
            if isinstance(child, ast.Import):
                libraries = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                libraries = [child.module]
            elif isinstance(child, ast.ImportFrom):  # relative: one of ours
                base = package[:len(package) - (child.level - 1)] + (child.module.split(".") if child.module else [])
                for alias in child.names:
                    found = _internal_name(base + [alias.name], modules)
                    if found and found != name:
                        internal.add(found)
            for library in libraries:
                top = library.split(".")[0]
                assert top not in ("bottleneck", "bottleneck_features"), f"{name}: import the package relatively"
                if top not in sys.stdlib_module_names and top != "__future__":
                    (lazy if nested else loaded).add(top)
            visit(child, nested)

    visit(ast.parse(path.read_text()), False)
    return internal, loaded, lazy - loaded


def documented() -> list[tuple[str, set[str], set[str], set[str]]]:
    rows = []
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        match = re.fullmatch(r"\| `([\w.]+)` \|[^|]*\|([^|]*)\|([^|]*)\|([^|]*)\|", line.strip())
        if match:
            name, *columns = match.groups()
            rows.append((name, *({w for w in re.split(r"[,\s]+", c) if w} for c in columns)))
    return rows


def test_module_table_matches_the_imports() -> None:
    rows = documented()
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py") if _module_name(p)}
    assert sorted(name for name, *_ in rows) == sorted(files)
    above: set[str] = set()
    for name, deps, libraries, when_used in rows:
        internal, loaded, lazy = real_imports(files[name], set(files), name)
        assert internal == deps, f"{name}: imports {sorted(internal)}, the table says {sorted(deps)}"
        assert loaded == libraries, f"{name}: loads {sorted(loaded)}, the table says {sorted(libraries)}"
        assert lazy == when_used, f"{name}: imports {sorted(lazy)} in functions, the table says {sorted(when_used)}"
        assert internal <= above, f"{name} imports {sorted(internal - above)}, listed below it"
        above.add(name)


def test_the_check_sees_a_wrong_row(tmp_path: Path) -> None:
    module = tmp_path / "bottleneck" / "late.py"
    module.parent.mkdir()
    module.write_text("import numpy\nfrom .spec import Preprocess\n\ndef f():\n    import torch\n")
    assert real_imports(module, {"spec", "late"}, "late") == ({"spec"}, {"numpy"}, {"torch"})
