"""The Python API, `python -m bottleneck_features`, and living next to pandas and pydata's Bottleneck."""

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import bottleneck_features as bf
from bottleneck_features import api, cli
from bottleneck_features.comparison import DEFAULT_HEADS, DEFAULT_TUNED
from bottleneck_features.sources import register_model
from conftest import on_host
from tiny_backbone import tiny_backbone


def test_installs_beside_pandas_and_pydata_bottleneck(tmp_path: Path) -> None:
    """Where pandas and pydata's Bottleneck are installed (CI installs both), `import bottleneck` is
    theirs, pandas imports it without a warning, and this package still imports."""
    code = ("import importlib.util as u, sys; "
            "sys.exit(3) if not (u.find_spec('pandas') and u.find_spec('bottleneck')) else None; "
            "import pandas, bottleneck, bottleneck_features; "
            "assert hasattr(bottleneck, 'nanmean'), bottleneck.__file__; print(bottleneck.__version__)")
    run = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    if run.returncode == 3:
        pytest.skip("pandas or pydata's Bottleneck is not installed here")
    assert run.returncode == 0, run.stderr[-2000:]


def test_python_dash_m_runs_the_cli(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "bottleneck_features", "--help"], cwd=tmp_path, capture_output=True,
                         text=True)
    assert run.returncode == 0 and "Usage: bottleneck" in run.stdout and "export" in run.stdout
    assert "--install-completion" in run.stdout


def test_importing_the_package_is_cheap(tmp_path: Path) -> None:
    code = "import sys, bottleneck_features as bf; bf.__version__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


def test_api_functions_stay_functions_after_every_module_is_loaded(tmp_path: Path) -> None:
    """Loading a submodule binds its name on the package: one named like an API function (audit.py,
    repair.py once) turned `bf.audit` into a module after its first call."""
    code = ("import pkgutil, importlib, bottleneck_features as bf\n"
            "for m in pkgutil.walk_packages(bf.__path__, 'bottleneck_features.'):\n"
            "    try:\n"
            "        m.name.endswith('__main__') or importlib.import_module(m.name)\n"
            "    except ModuleNotFoundError as e:\n"  # an optional extra that is not installed (ray, onnx)
            "        assert not e.name.startswith('bottleneck_features'), e\n"
            "print(' '.join(n for n in bf.__all__ if not callable(getattr(bf, n))))")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == []


@pytest.mark.parametrize("command", ["extract", "fit", "predict", "compare", "export"])
def test_api_defaults_are_the_clis(command: str) -> None:
    cli_defaults = {name: getattr(p.default, "default", p.default)
                    for name, p in inspect.signature(getattr(cli, command)).parameters.items()}
    renamed = {"out_dir": "out", "fmt": "format", "out_file": None, "quiet": None}
    for name, default in cli_defaults.items():
        name = renamed.get(name, name)
        parameter = inspect.signature(getattr(api, command)).parameters.get(name) if name else None
        if parameter is None or default is ... or parameter.default is inspect.Parameter.empty:
            continue
        if command == "compare" and name in ("heads", "tune"):
            assert default.split(",") == list(DEFAULT_HEADS if name == "heads" else DEFAULT_TUNED)
        elif command == "compare" and name == "pixels":
            assert default == parameter.default == 32
        else:
            assert default == parameter.default or str(default) == str(parameter.default), (command, name)


@pytest.mark.every_host
def test_a_notebook_session(image_folder: Path, tmp_path: Path, host: str) -> None:
    register_model("tiny", lambda weights=None, layer=None, pool="avg": tiny_backbone().using(layer=layer, pool=pool))
    cache = tmp_path / "cache.h5"
    report = bf.extract(image_folder, "tiny", cache=cache, workers=0)
    assert (report.found, report.computed) == (18, 18)
    features = bf.load_features(cache=cache)
    X, y, paths = features.X, features.y, features.paths
    assert X.shape == (18, 8) and len(y) == len(paths) == 18 and features.spec.model == "tiny"
    fitted = bf.fit("knn", cache=cache)
    sizes, accuracy = fitted.sidecar["sizes"], fitted.sidecar["metrics"]["test_accuracy"]
    assert fitted.head_path.is_file() and sum(sizes.values()) == 18
    assert accuracy * sizes["test"] == pytest.approx(round(accuracy * sizes["test"]))  # a share of the test images
    predictions = bf.predict(image_folder / "cat", fitted.head_path, cache=cache)
    assert len(predictions.items) == 6 and not predictions.skipped
    result = bf.compare(heads=["knn"], per_class=[3], repeats=1, pixels=8, cache=cache, out=tmp_path / "report")
    assert {c.features for c in result.cells} == {on_host("tiny", host), "raw8"}
    written = bf.export(tmp_path / "features.npz", cache=cache)
    assert written.is_file()
    pd = pytest.importorskip("pandas")
    frame = features.to_frame()
    assert isinstance(frame, pd.DataFrame) and frame.shape == (18, 4 + 8) and list(frame.columns[:4]) == [
        "path", "label", "split", "sha256"]
    assert len(predictions.to_frame()) == 6 and set(result.to_frame()["features"]) == {on_host("tiny", host), "raw8"}
