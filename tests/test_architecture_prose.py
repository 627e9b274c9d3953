"""docs/architecture.md's prose agrees with the code where a test can tell: the key contracts (each
class's fields, each function's parameters, defaults and return type), the HDF5 layout (against a
cache written by a real extraction), the `module.name`s and numbers it quotes, the attributes the
module table names, and which commands the api and cli rows say go through the API.

Each check is shown to fail on a wrong doc: test_the_contract_check_sees_a_wrong_contract here, and
by hand for the others (a changed number, name or attribute list fails its test)."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
PACKAGE = "bottleneck_features"
PACKAGE_DIR = ROOT / "bottleneck"
# Backticked names in the module table that belong to a library, not to the row's module.
FOREIGN = {"fuse_conv_bn_weights", "pretrained_cfg"}


def _text() -> str:
    return DOC.read_text()


def _fenced(text: str, heading: str) -> list[str]:
    """The lines of the first fenced block after `heading`."""
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("```"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
    return lines[start + 1:end]


def _modules() -> set[str]:
    names = set()
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = path.relative_to(PACKAGE_DIR).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names - {""}


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.{name}" if name else PACKAGE)


# --- splitting pseudo-code at the top level (outside brackets and quotes) ----------------------------


def _top_level(text: str) -> list[tuple[int, str]]:
    """(index, character) of each character of `text` outside brackets and string literals."""
    found, depth, quote = [], 0, ""
    for i, c in enumerate(text):
        if quote:
            quote = "" if c == quote else quote
        elif c in "\"'":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            found.append((i, c))
    return found


def _strip_comment(line: str) -> str:
    cut = next((i for i, c in _top_level(line) if c == "#"), len(line))
    return line[:cut].rstrip()


def _split(text: str, separator: str) -> list[str]:
    at = {i for i, _ in _top_level(text)}
    parts, start, i = [], 0, 0
    while i < len(text):
        if i in at and text.startswith(separator, i):
            parts.append(text[start:i])
            start = i = i + len(separator)
        else:
            i += 1
    return [p.strip() for p in parts + [text[start:]] if p.strip()]


def _call(text: str) -> tuple[str, str, str | None] | None:
    """"name(args) -> ret" as (name, args, ret); None when `text` is not a call."""
    match = re.match(r"[\w.]+\(", text)
    if not match:
        return None
    depth = 0
    for i in range(match.end() - 1, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            rest = text[i + 1:].strip()
            if rest and not rest.startswith("->"):
                return None
            return text[:match.end() - 1], text[match.end():i], rest[2:].strip() if rest else None
    return None


# --- the checks -----------------------------------------------------------------------------------


class Contracts:
    """Reads the key-contracts block and collects every way it differs from the code."""

    TYPE = re.compile(r"(?:[A-Z]\w*|list|dict|tuple|str|int|float|bool)(?:\[[\w\[\], |]+\])?(?: \| None)?")
    DATACLASS = re.compile(r"(?:@dataclass(\(frozen=True\))?\s+)?class\s+([\w.]+):\s*(.*)")

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.checked = 0
        self.module: ModuleType | None = None
        self.cls: Any = None
        self.fields: dict[Any, set[str]] = {}
        self.aliases: dict[str, Any] = {}

    def read(self, lines: list[str]) -> Contracts:
        modules = _modules()
        for raw in lines:
            if raw.startswith("#"):  # "# spec": the lines below come from that module
                words = raw[1:].split()
                if words and words[0] in modules:
                    self.module, self.cls = _module(words[0]), None
                continue
            if not raw.startswith(" "):
                self.cls = None
            code = _strip_comment(raw).strip()
            if not code:
                continue
            with_line = re.fullmatch(r"with\s+(.+?)\s+as\s+(\w+):", code)
            header = self.DATACLASS.fullmatch(code)
            if with_line:
                self.call(with_line.group(1), usage=True)
                owner = with_line.group(1).split("(")[0].rsplit(".", 1)[0]
                self.aliases[with_line.group(2)] = self.resolve(owner)
                continue
            if header:
                code = self.start_class(raw, header)
            for statement in _split(code, ";"):
                for piece in _split(statement, " / "):
                    self.item(piece)
        self.finish_class()
        return self

    def resolve(self, name: str) -> Any:
        parts = name.split(".")
        if parts[0] in self.aliases:
            obj, parts = self.aliases[parts[0]], parts[1:]
        elif self.cls is not None and hasattr(self.cls, parts[0]):
            obj = self.cls
        elif self.module is not None and hasattr(self.module, parts[0]):
            obj = self.module
        else:
            obj, parts = _module(parts[0]), parts[1:]
        for part in parts:
            obj = getattr(obj, part)
        return obj

    def start_class(self, raw: str, header: re.Match[str]) -> str:
        self.finish_class()
        try:
            self.cls = self.resolve(header.group(2))
        except (AttributeError, ImportError):
            self.problems.append(f"{header.group(2)}: no such class")
            self.cls = None
            return ""
        self.fields[self.cls] = set()
        declared = raw.lstrip().startswith("@dataclass")
        if declared and not dataclasses.is_dataclass(self.cls):
            self.problems.append(f"{header.group(2)} is not a dataclass")
        elif declared and self.cls.__dataclass_params__.frozen != bool(header.group(1)):
            self.problems.append(f"{header.group(2)}: frozen is {self.cls.__dataclass_params__.frozen}")
        elif not declared:
            del self.fields[self.cls]  # a plain class: its members are checked, not its completeness
        return header.group(3)

    def finish_class(self) -> None:
        for cls, documented in self.fields.items():
            missing = [f.name for f in dataclasses.fields(cls) if f.name not in documented]
            if missing:
                self.problems.append(f"{cls.__name__}: fields {missing} are not in the doc")
        self.fields.clear()

    def item(self, piece: str) -> None:
        call = _call(piece)
        if call:
            self.call(piece)
            return
        field = re.fullmatch(r"(\w+)\s*(?::\s*([^=]+?))?\s*(?:=\s*(.+))?", piece)
        if self.cls is None or not field:
            self.problems.append(f"{piece!r}: neither a call nor a field of a class")
            return
        self.field(*field.groups())

    def field(self, name: str, annotation: str | None, default: str | None) -> None:
        self.checked += 1
        cls, where = self.cls, f"{self.cls.__name__}.{name}"
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if name not in fields:
            if not hasattr(cls, name):
                self.problems.append(f"{where}: no such field or attribute")
            elif annotation or default:
                self.problems.append(f"{where}: not a field, but the doc gives it a type or a default")
            return
        if cls in self.fields:
            self.fields[cls].add(name)
        f = fields[name]
        if annotation and " ".join(str(f.type).split()) != " ".join(annotation.split()):
            self.problems.append(f"{where}: typed {f.type}, the doc says {annotation}")
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if default is None and has_default:
            self.problems.append(f"{where}: defaults to {f.default!r}, the doc gives no default")
        elif default is not None and (not has_default or f.default != ast.literal_eval(default)):
            self.problems.append(f"{where}: defaults to {f.default!r}, the doc says {default}")

    def call(self, text: str, usage: bool = False) -> None:
        """`usage`: a call as written in use (`with Store.open(path, writable=True)`): names only."""
        parsed = _call(text)
        assert parsed, text
        name, args, returns = parsed
        self.checked += 1
        try:
            obj = self.resolve(name)
            signature = inspect.signature(obj)
        except (AttributeError, ImportError, ValueError, TypeError) as exc:
            self.problems.append(f"{name}: {type(exc).__name__}: {exc}")
            return
        real = list(signature.parameters.values())
        if real and real[0].name in ("self", "cls"):
            real = real[1:]
        written = _split(args, ",")
        if written != ["..."]:
            self.parameters(name, real, written, usage)
        if returns is None:
            return
        if _call(returns):
            self.call(returns)
        elif self.TYPE.fullmatch(returns):
            annotation = signature.return_annotation
            if not isinstance(annotation, str):
                annotation = inspect.formatannotation(annotation)
            if annotation != returns:
                self.problems.append(f"{name} returns {annotation}, the doc says {returns}")

    def parameters(self, name: str, real: list[inspect.Parameter], written: list[str], usage: bool) -> None:
        keyword_only, doc = False, []
        for arg in written:
            if arg == "*":
                keyword_only = True
                continue
            match = re.match(r"(\*\*|\*)?(\w+)", arg)
            assert match, (name, arg)
            rest = arg[match.end():].strip()
            default = rest[1:].strip() if rest.startswith("=") and rest[1:].strip() else None
            doc.append((match.group(2), match.group(1), keyword_only, default))
        if [p.name for p in real] != [d[0] for d in doc]:
            self.problems.append(f"{name} takes ({', '.join(p.name for p in real)}), the doc says "
                                 f"({', '.join(d[0] for d in doc)})")
            return
        kinds = {"**": inspect.Parameter.VAR_KEYWORD, "*": inspect.Parameter.VAR_POSITIONAL}
        for p, (pname, stars, kw_only, default) in zip(real, doc, strict=True):
            if stars and p.kind != kinds[stars] or not stars and (p.kind == p.KEYWORD_ONLY) != kw_only:
                self.problems.append(f"{name}: {pname} is {p.kind.description}")
            if usage or stars:
                continue
            if default is None and p.default is not p.empty:
                self.problems.append(f"{name}: {pname} defaults to {p.default!r}, the doc gives no default")
            elif default is not None and (p.default is p.empty or p.default != ast.literal_eval(default)):
                self.problems.append(f"{name}: {pname} defaults to "
                                     f"{'nothing' if p.default is p.empty else repr(p.default)}, the doc says {default}")


def test_key_contracts_match_the_code() -> None:
    contracts = Contracts().read(_fenced(_text(), "## Key contracts"))
    assert contracts.checked >= 60, "the block was not read: fewer contracts than it holds"
    assert not contracts.problems, "docs/architecture.md's key contracts:\n" + "\n".join(contracts.problems)


def test_the_contract_check_sees_a_wrong_contract() -> None:
    wrong = ["# spec",
             "@dataclass class Preprocess: input_size; resize_size",  # frozen; fields left out
             "@dataclass(frozen=True) class ExtractorSpec:",
             "    precision = \"fp32\"; fingerprint(seed) -> int; label() -> str",
             "# sources",
             "resolve_spec(model, weights=None, layer=None, pool=\"avg\", precision=\"auto\", dtype=\"float32\", "
             "decode=\"pil\")",  # keyword-only
             "build(spec, weights_file) -> Backbone",  # weights_file has a default
             "no_such_function(x)"]
    problems = "\n".join(Contracts().read(wrong).problems)
    for expected in ("Preprocess: frozen", "precision: defaults to 'auto', the doc says \"fp32\"",
                     "fingerprint takes ()", "weights is keyword-only", "weights_file defaults to None",
                     "no_such_function: ModuleNotFoundError", "ExtractorSpec: fields ["):
        assert expected in problems, problems
    assert "label" not in problems


# --- the HDF5 layout ------------------------------------------------------------------------------


def _names(text: str) -> set[str]:
    while re.search(r"\([^()]*\)", text):
        text = re.sub(r"\([^()]*\)", "", text)
    text = re.split(r"[;—]", text)[0]
    return {w.strip() for w in text.split(",") if re.fullmatch(r"\w+", w.strip())}


def documented_layout() -> dict[str, dict[str, Any]]:
    """{group: {"attrs": names, "members": {member: {"attrs": names, "line": its line}}}}."""
    lines: list[str] = []
    for line in _fenced(_text(), "## HDF5 layout"):
        if re.match(r" {5,}\S", line) and lines:  # a continuation of the line above
            lines[-1] += " " + line.strip()
        else:
            lines.append(line)
    layout: dict[str, dict[str, Any]] = {}
    for line in lines:
        if line.startswith("/"):  # a group: its attributes, or ("path index: ...") its members
            group = layout.setdefault(line.split()[0], {"attrs": set(), "members": {}})
            if "attrs:" in line:
                group["attrs"] |= _names(line.split("attrs:", 1)[1])
            else:
                group["members"].update({name: {"attrs": set(), "line": line}
                                         for name in _names(line.split(":", 1)[1])})
        else:  # "    keys     (N,)   S64   ...; attrs: fingerprint"
            attrs = _names(line.split("attrs:", 1)[1]) if "attrs:" in line else set()
            for name in re.split(r"\s{2,}", line.strip())[0].split(","):
                group["members"][name.strip()] = {"attrs": attrs, "line": line}
    return layout


def test_hdf5_layout_is_what_extract_writes(image_folder: Path, tmp_path: Path) -> None:
    from test_shards import folder_to_shards, write_shards

    from bottleneck_features.extraction import extract_dataset
    from bottleneck_features.sources import resolve_spec

    cache = tmp_path / "cache.h5"
    extract_dataset(image_folder, resolve_spec("raw8"), cache)
    extract_dataset(write_shards(tmp_path / "shards", folder_to_shards(image_folder, 1)), resolve_spec("raw8"), cache)
    layout = documented_layout()
    assert set(layout) == {"/", "/extractors/<fp>/", "/datasets/<name>/", "/paths/", "/tables/shards/"}
    with h5py.File(cache, "r") as h5:
        assert set(h5) == {p.strip("/").split("/")[0] for p in layout if p != "/"}
        assert set(h5.attrs) == layout["/"]["attrs"]
        for path, group in layout.items():
            if path == "/":
                continue
            real = h5[path.strip("/").split("/<")[0]]
            if "<" in path:  # one group per fingerprint or dataset name: the first
                real = next(iter(real.values()))
            assert set(real.attrs) == group["attrs"], path
            assert set(real) == set(group["members"]), path
            for name, member in group["members"].items():
                assert set(real[name].attrs) == member["attrs"], f"{path}{name}"
        vectors = layout["/extractors/<fp>/"]["members"]
        keys = h5["extractors"][next(iter(h5["extractors"]))]["keys"]
        assert keys.dtype.str[1:] in vectors["keys"]["line"]  # S64
        assert keys.fletcher32 and "fletcher32" in _text()


# --- names and numbers quoted in the prose ---------------------------------------------------------


def _prose() -> str:
    """The doc without its fenced blocks (the contracts and the layout are checked above)."""
    return re.sub(r"```.*?```", "", _text(), flags=re.S)


def _resolve_dotted(name: str) -> Any:
    parts = name.split(".")
    if parts[0] == PACKAGE:
        parts = parts[1:]
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        if module_name not in _modules():
            continue
        obj: Any = _module(module_name)
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    raise AttributeError(f"{name}: no module of the package starts it")


def test_quoted_names_exist() -> None:
    files = (".py", ".md", ".h5", ".html", ".csv", ".json", ".joblib")
    dotted = [name for name in re.findall(r"`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?:\(\))?`", _prose())
              if not name.endswith(files)]
    assert len(dotted) >= 20  # the table's module names and the prose's references
    missing = []
    for name in dotted:
        try:
            _resolve_dotted(name)
        except AttributeError as exc:
            missing.append(f"{name}: {exc}")
    assert not missing, "docs/architecture.md quotes names the code lacks:\n" + "\n".join(missing)


def test_module_table_names_its_modules_attributes() -> None:
    """In the table's "one job" column, a backticked Python name (CamelCase, CAPS or snake_case) is
    one of the row's module's attributes."""
    missing, seen = [], 0
    for line in _text().splitlines():
        row = re.fullmatch(r"\| `([\w.]+)` \|([^|]*)\|.*", line.strip())
        if not row or row.group(1) == "__main__":  # importing it runs the CLI
            continue
        module = _module(row.group(1))
        for name in re.findall(r"`([A-Za-z_]\w*)`", row.group(2)):
            if name in FOREIGN or not re.fullmatch(r"_?[A-Z][a-z]\w*|[A-Z][A-Z_]+|_?[a-z]+(?:_[a-z0-9]+)+", name):
                continue
            seen += 1
            if not hasattr(module, name):
                missing.append(f"{row.group(1)}.{name}")
    assert seen >= 15
    assert not missing, f"the module table names attributes its modules lack: {missing}"


def test_quoted_numbers_are_the_codes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from bottleneck_features.heads import HEADS
    from bottleneck_features.neighbours import cosine_neighbours
    from bottleneck_features.sources import resolve_spec
    from bottleneck_features.store import ManifestRow, Store, _cache, _disk, _rows

    text = " ".join(_text().split())
    reserves: list[int] = []
    monkeypatch.setattr(_cache, "check_room", lambda path, nbytes, reserve=_disk.RESERVE: reserves.append(reserve))
    spec = resolve_spec("raw8")
    with Store.open(tmp_path / "cache.h5", writable=True) as store:
        store.ensure_extractor(spec.fingerprint(), spec)
        store.add_vectors(spec.fingerprint(), ["a" * 64], np.zeros((1, spec.feature_dim), np.float32))
        store.write_manifest("data", tmp_path, "class_folders", [ManifestRow("x.png", "cat", "", "a" * 64, "ok")],
                             spec.fingerprint())
        store.write_path_index({str(tmp_path / "x.png"): (1, 1, "a" * 64)})
    vectors, manifest, paths = reserves
    mib = 1 << 20

    assert _quoted(r"must leave (\d+) MiB free \(`store._disk.RESERVE`\)", text) * mib == _disk.RESERVE == vectors, \
        f"vectors keep {_disk.RESERVE / mib:g} MiB free (RESERVE) and add_vectors asks {vectors / mib:g} MiB"
    assert _quoted(r"a manifest or the path index (\d+) MiB", text) * mib == manifest == paths, \
        f"write_manifest keeps {manifest / mib:g} MiB free and write_path_index {paths / mib:g} MiB"
    chunk = _quoted(r"chunked \(~(\d+) MiB\)", text) * mib
    assert abs(_rows._chunk_rows(1280, 4) * 1280 * 4 - chunk) < 0.01 * chunk, "the vectors' chunks are not that size"
    exact = inspect.signature(cosine_neighbours).parameters["exact_max_rows"].default
    assert _quoted(r"rescored exactly beyond ([\d,]+) rows", text) == exact, f"neighbours: exact up to {exact} rows"
    listed = re.search(r"scikit-learn estimators \(([^;)]+);", text)
    assert listed and [h.strip() for h in listed[1].split(",")] == list(HEADS), f"the heads are {list(HEADS)}"
    assert "`raw32-<hash>`" in text and resolve_spec("raw32").fingerprint().startswith("raw32-")


def _quoted(pattern: str, text: str) -> int:
    """The number `pattern` finds in the doc (its commas dropped)."""
    found = re.search(pattern, text)
    assert found, f"the doc no longer says /{pattern}/: update the doc and this test together"
    return int(found[1].replace(",", ""))


def test_api_and_cli_rows_name_the_commands() -> None:
    """The api row lists the package's functions; the cli row, the commands that bypass them."""
    import bottleneck_features
    from bottleneck_features.cli import app

    rows = {m[1]: m[2] for m in re.finditer(r"^\| `(api|cli)` \|([^|]*)\|", _text(), flags=re.M)}
    api = set(re.findall(r"`(\w+)`", rows["api"]))
    assert api == set(bottleneck_features.__all__), f"the API is {sorted(bottleneck_features.__all__)}"
    commands = {(c.name or c.callback.__name__).replace("-", "_") for c in app.registered_commands}
    bypass = set(re.findall(r"`(\w+)`", rows["cli"]))
    assert bypass == commands - api, f"the commands without an API function are {sorted(commands - api)}"
