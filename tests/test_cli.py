from pathlib import Path

import pytest
from typer.testing import CliRunner

import bottleneck_features.training
from bottleneck_features.cli import app
from bottleneck_features.sources import register_model
from conftest import on_host
from tiny_backbone import tiny_backbone


@pytest.fixture
def tiny() -> None:
    built: dict = {}
    register_model("tiny", lambda weights=None, layer=None, pool="avg":
                   built.setdefault((layer, pool), tiny_backbone().using(layer=layer, pool=pool)))


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(image_folder: Path, tmp_path: Path, tiny: None,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    runner, cache = CliRunner(), str(tmp_path / "c.h5")
    bad = runner.invoke(app, ["extract", str(image_folder), "--model", "tiny", "--pool", "median", "--cache", cache])
    assert bad.exit_code == 1 and bad.output.strip() == "error: --pool median: use one of avg, max, none"
    assert runner.invoke(app, ["extract", str(image_folder), "--model", "tiny", "--cache", cache, "-q"]).exit_code == 0
    cut = runner.invoke(app, ["compare", "--finetune", "nope", "--cache", cache, "-q"])
    assert cut.exit_code == 1 and cut.output.startswith("error: --finetune nope: no layer 'nope' in CountingNet")
    assert len(cut.output.strip().splitlines()) == 1

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("an internal bug")

    monkeypatch.setattr(bottleneck_features.training, "fit_head", broken)
    crashed = runner.invoke(app, ["fit", "--cache", cache])
    assert isinstance(crashed.exception, ValueError) and crashed.exception.__traceback__ is not None


@pytest.mark.every_host
def test_progress_and_results_show_labels_as_text(image_folder: Path, tmp_path: Path, tiny: None, host: str) -> None:
    """A label such as tiny[conv,max] is data: rich must not read [conv,max] as markup."""
    runner, cache = CliRunner(), str(tmp_path / "c.h5")
    result = runner.invoke(app, ["extract", str(image_folder), "--model", "tiny", "--layer", "conv", "--pool", "max",
                                 "--workers", "0", "--cache", cache])
    assert result.exit_code == 0, result.output
    label = on_host("tiny[conv,max]", host)
    assert f"extract {label}" in result.output
    fitted = runner.invoke(app, ["fit", "--head", "knn", "--cache", cache])
    assert fitted.exit_code == 0 and f"({label})" in fitted.output
    info = runner.invoke(app, ["info", "--cache", cache])
    assert "tiny[conv" in info.output


def test_per_class_must_be_numbers(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["compare", "--per-class", "abc", "--cache", str(tmp_path / "c.h5")])
    assert result.exit_code == 2 and "whole numbers" in result.output
