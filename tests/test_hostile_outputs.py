"""Issue 24, what a command writes: no output path may be the cache, an input or another output; an
unusable --out is one line; a head that is not what its sidecar claims is one line; `--help` shows
brackets as typed."""

import hashlib
import json
import os
from pathlib import Path

import joblib
import pytest
from typer.testing import CliRunner

import bottleneck_features as bf
import bottleneck_features.formats
from bottleneck_features import api
from bottleneck_features.cli import app
from bottleneck_features.errors import OutputError
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from bottleneck_features.sources import register_model, resolve_spec
from bottleneck_features.training import fit_head
from tiny_backbone import tiny_backbone

QUIET = ExtractOptions(workers=0, batch_size=4)
CHEAP_COMPARE = ["--heads", "knn", "--tune", "none", "--per-class", "2", "--repeats", "1", "--pixels", "0", "-q"]


def one_line_error(result) -> str:  # noqa: ANN001
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(image_folder: Path, tmp_path: Path) -> Path:
    """image_folder extracted by the tiny backbone; `tiny` registered so that predict can rebuild it."""
    register_model("tiny", lambda weights=None, layer=None, pool="avg": tiny_backbone())
    path = tmp_path / "cache" / "c.h5"
    path.parent.mkdir()
    extract_dataset(image_folder, tiny_backbone(), path, options=QUIET)
    return path


def extracted_into(image_folder: Path, path: Path) -> Path:
    """A cache at an unusual path (a name one of the outputs will have)."""
    register_model("tiny", lambda weights=None, layer=None, pool="avg": tiny_backbone())
    path.parent.mkdir(parents=True, exist_ok=True)
    extract_dataset(image_folder, tiny_backbone(), path, options=QUIET)
    return path


def invoke(args: list[str], cache: Path) -> str:
    """The one-line error of `args`, checking the cache was not touched."""
    before = digest(cache)
    message = one_line_error(CliRunner().invoke(app, [*args, "--cache", str(cache)]))
    assert digest(cache) == before
    return message


# 1. an output is never the cache, an input or another output ----------------------------------------


@pytest.mark.parametrize("target", ["cache", "symlink", "lock"])
def test_export_never_writes_over_the_cache(cache: Path, tmp_path: Path, target: str) -> None:
    out = {"cache": cache, "symlink": tmp_path / "link.h5", "lock": cache.with_name("c.h5.lock")}[target]
    if target == "symlink":
        out.symlink_to(cache)
    message = invoke(["export", str(out), "--format", "csv"], cache)
    assert f"error: {out}: OUT would overwrite the cache" in message and "choose another OUT" in message
    assert bf.load_features(cache=cache).X.shape == (18, 8)


@pytest.mark.parametrize("target", ["cache", "symlink"])
def test_fit_never_writes_its_head_over_the_cache(cache: Path, tmp_path: Path, target: str) -> None:
    out = cache if target == "cache" else tmp_path / "head.joblib"
    if target == "symlink":
        out.symlink_to(cache)
    message = invoke(["fit", "--head", "knn", "--out", str(out)], cache)
    assert f"{out}: --out would overwrite the cache" in message


def test_fit_never_writes_its_sidecar_over_the_cache(image_folder: Path, tmp_path: Path) -> None:
    cache = extracted_into(image_folder, tmp_path / "head.json")
    message = invoke(["fit", "--head", "knn", "--out", str(tmp_path / "head.joblib")], cache)
    assert f"{cache}: its sidecar would overwrite the cache" in message
    assert not (tmp_path / "head.joblib").exists()


def test_fit_out_that_is_its_own_sidecar_is_refused(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "head.json"
    message = invoke(["fit", "--head", "knn", "--out", str(out)], cache)
    assert f"{out}: its sidecar would overwrite --out; choose another --out" in message
    assert not out.exists()


@pytest.mark.parametrize("target", ["cache", "image", "folder", "head", "sidecar", "new image in folder"])
def test_predict_never_writes_over_the_cache_or_an_input(cache: Path, image_folder: Path, tmp_path: Path,
                                                         target: str) -> None:
    head = fit_head(cache, head="knn", out=tmp_path / "heads" / "h.joblib").head_path
    image = image_folder / "cat" / "cat1.jpg"
    out = {"cache": cache, "image": image, "folder": image_folder / "cat", "head": head,
           "sidecar": head.with_suffix(".json"), "new image in folder": image_folder / "cat" / "new.png"}[target]
    kept = {p: digest(p) for p in (image, head, head.with_suffix(".json"))}
    message = invoke(["predict", str(image), str(image_folder / "cat"), "--head", str(head), "--out", str(out),
                      "--format", "csv", "-q"], cache)
    assert message.startswith(f"error: {out}: --out would ") and "choose another --out" in message
    assert {p: digest(p) for p in kept} == kept and not (image_folder / "cat" / "new.png").exists()


def test_compare_never_writes_its_report_over_the_cache(image_folder: Path, tmp_path: Path) -> None:
    cache = extracted_into(image_folder, tmp_path / "reports" / "results.csv")
    message = invoke(["compare", "--out", str(cache.parent), *CHEAP_COMPARE], cache)
    assert f"{cache}: the report would overwrite the cache" in message


def test_compare_never_adds_pictures_to_the_dataset(cache: Path, image_folder: Path) -> None:
    out = image_folder / "cat"
    message = invoke(["compare", "--out", str(out), *CHEAP_COMPARE], cache)
    assert "would write an image into the dataset folder" in message
    assert sorted(p.name for p in out.iterdir()) == [f"cat{i}.{'png' if i % 3 == 0 else 'jpg'}" for i in range(6)]


def test_audit_never_writes_its_report_over_the_cache(image_folder: Path, tmp_path: Path) -> None:
    cache = extracted_into(image_folder, tmp_path / "a" / "audit.json")
    message = invoke(["audit", "--out", str(cache.parent)], cache)
    assert f"{cache}: the audit report would overwrite the cache" in message


def test_the_python_api_refuses_too(cache: Path, image_folder: Path, tmp_path: Path) -> None:
    head = fit_head(cache, head="knn", out=tmp_path / "h.joblib").head_path
    before = digest(cache)
    calls = [lambda: bf.export(cache, cache=cache, format="csv"),
             lambda: bf.fit("knn", cache=cache, out=cache),
             lambda: bf.predict(image_folder, head, cache=cache, out=head, format="csv"),
             lambda: bf.compare(heads=["knn"], per_class=[2], repeats=1, pixels=None, cache=cache,
                                out=image_folder / "owl"),
             lambda: api.audit(cache=cache, out=cache)]
    for call in calls:
        with pytest.raises(OutputError):
            call()
    assert digest(cache) == before and digest(head) == json.loads(head.with_suffix(".json").read_text())["sha256"]


# 2. an --out nothing can be written to is one line ---------------------------------------------------

FILE_OUTS = {"fit": ["fit", "--head", "knn"], "export": ["export"], "predict": ["predict", "DATA", "--head", "HEAD"]}
FOLDER_OUTS = {"compare": ["compare", *CHEAP_COMPARE], "audit": ["audit"]}


def _args(command: list[str], out: Path, image_folder: Path, head: Path) -> list[str]:
    args = [str(image_folder) if a == "DATA" else str(head) if a == "HEAD" else a for a in command]
    return [*args, str(out)] if command[0] == "export" else [*args, "--out", str(out)]


@pytest.mark.parametrize("command", [*FILE_OUTS, *FOLDER_OUTS])
@pytest.mark.parametrize("case", ["folder or file", "parent is a file", "under /proc"])
def test_an_unusable_out_is_one_line(cache: Path, image_folder: Path, tmp_path: Path, command: str,
                                     case: str) -> None:
    head = fit_head(cache, head="knn", out=tmp_path / "h.joblib").head_path
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("keep me")
    wants_folder = command in FOLDER_OUTS
    out = {"folder or file": tmp_path / ("a_file" if wants_folder else "a_folder"),
           "parent is a file": tmp_path / "a_file" / ("report" if wants_folder else "out.csv"),
           "under /proc": Path("/proc/bottleneck-no-such-dir") / ("report" if wants_folder else "out.csv")}[case]
    message = invoke(_args({**FILE_OUTS, **FOLDER_OUTS}[command], out, image_folder, head), cache)
    assert message.startswith(f"error: {out}: ") and ("--out" in message or "OUT" in message)
    assert (tmp_path / "a_file").read_text() == "keep me" and not any((tmp_path / "a_folder").iterdir())


def test_a_write_that_fails_anyway_is_one_line(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bottleneck_features.formats.np, "savez", full)
    out = tmp_path / "x.npz"
    message = invoke(["export", str(out)], cache)
    assert message == f"error: {out}: could not write it (No space left on device); choose another OUT or free space"


# 3. a head that is not what its sidecar claims -------------------------------------------------------


@pytest.fixture
def head(cache: Path, tmp_path: Path) -> Path:
    return fit_head(cache, head="knn", out=tmp_path / "heads" / "h.joblib").head_path


def _predict(head: Path, image_folder: Path, cache: Path) -> str:
    return invoke(["predict", str(image_folder), "--head", str(head), "-q"], cache)


@pytest.mark.parametrize("sidecar", [[1, 2], "text", 3, None, {"extractor": [1]}, {"extractor": {"spec": [],
                                                                                                  "fingerprint": "x"}}])
def test_a_sidecar_that_is_not_an_object_is_one_line(head: Path, image_folder: Path, cache: Path,
                                                     sidecar: object) -> None:
    meta = json.loads(head.with_suffix(".json").read_text())
    if isinstance(sidecar, dict):
        sidecar = {**meta, **sidecar}
    head.with_suffix(".json").write_text(json.dumps(sidecar))
    assert str(head.with_suffix(".json")) in _predict(head, image_folder, cache)


@pytest.mark.parametrize("claimed", ["tiny", "efficientnet_lite0"])
def test_a_sidecar_claiming_another_models_spec_is_one_line(cache: Path, image_folder: Path, tmp_path: Path,
                                                            claimed: str) -> None:
    """A head trained on raw32 (3072-d) whose sidecar says another extractor made its features."""
    extract_dataset(image_folder, resolve_spec("raw32"), cache, options=QUIET)
    raw = fit_head(cache, head="knn", model="raw32", out=tmp_path / "raw.joblib").head_path
    if claimed == "tiny":
        spec = bf.load_features(model="tiny", cache=cache).spec
    else:
        spec = resolve_spec(claimed, precision="fp32")
    meta = json.loads(raw.with_suffix(".json").read_text())
    meta["extractor"] = {"fingerprint": spec.fingerprint(), "label": spec.label(), "spec": spec.to_dict()}
    raw.with_suffix(".json").write_text(json.dumps(meta))
    message = _predict(raw, image_folder, cache)
    assert f"{raw}: the head takes 3072-d features but" in message and f"gives {spec.feature_dim}-d" in message


@pytest.mark.parametrize("content", ["garbage", "empty", "truncated", "not a head"])
def test_a_joblib_file_that_matches_its_sidecar_but_is_no_head_is_one_line(head: Path, image_folder: Path,
                                                                           cache: Path, content: str) -> None:
    if content == "not a head":
        joblib.dump({"a": 1}, head)
    else:
        head.write_bytes({"garbage": b"\x80\x04not a pickle at all", "empty": b"",
                          "truncated": head.read_bytes()[: os.path.getsize(head) // 2]}[content])
    meta = json.loads(head.with_suffix(".json").read_text())
    meta["sha256"] = digest(head)
    head.with_suffix(".json").write_text(json.dumps(meta))
    message = _predict(head, image_folder, cache)
    assert message.startswith(f"error: {head}: ") and "refit with `bottleneck fit`" in message


# 4. help text is not markup ---------------------------------------------------------------------------


@pytest.mark.parametrize("command, text", [("extract", "pipinstall'bottleneck-features[ray]'"),
                                           ("fit", "resnet50[layer3,max]"), ("compare", "resnet50[layer3,max]"),
                                           ("export", "resnet50[layer3,max]")])
def test_help_shows_brackets_as_typed(command: str, text: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0 and text in "".join(result.output.replace("│", "").split())
