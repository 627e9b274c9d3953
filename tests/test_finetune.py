"""--finetune: the network after a layer trained on that layer's cached maps (the bottleneck way)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bottleneck_features.comparison import run_compare
from bottleneck_features.errors import BackboneError, CompareError
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from bottleneck_features.heads import FineTunedTailClassifier, make_head
from bottleneck_features.sources import build_tail, load_backbone, register_model, resolve_spec
from bottleneck_features.sources._common import Net, finish, split_tail
from bottleneck_features.store import Store, load_features
from conftest import on_host
from tiny_backbone import PREPROCESS


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)


@pytest.fixture(autouse=True)
def tiny_model() -> None:
    register_model("tinycnn", lambda weights=None, layer=None, pool="avg": finish(
        "tinycnn", Net(tiny_cnn(), PREPROCESS, "random-seed0", lambda model, pool: model), layer, pool))


def test_the_tail_continues_where_the_maps_stop() -> None:
    trunk = tiny_cnn().eval()
    tail, shape = split_tail(trunk, "2", 32)
    front = load_backbone("tinycnn", layer="2", pool="none")
    assert shape == (8, 15, 15) and front.spec.feature_dim == 8 * 15 * 15
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tail(front.model(x).reshape(4, *shape)), trunk(x))
    assert sum(p.numel() for p in tail.parameters()) < sum(p.numel() for p in trunk.parameters())


def test_a_cut_inside_a_skip_connection_is_refused() -> None:
    net = nn.Sequential(Residual(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with pytest.raises(BackboneError, match=r"'0.inner.0' is no cut: .*cut at a block's output"):
        split_tail(net, "0.inner.0", 16)
    split_tail(net, "0", 16)  # the block's output is a cut


def test_the_tail_trains_a_copy_with_frozen_batch_norm() -> None:
    tail, shape = build_tail(resolve_spec("tinycnn", layer="2", pool="none"))
    before = {k: v.clone() for k, v in tail.state_dict().items()}
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    X = rng.normal(size=(40, int(np.prod(shape)))).astype(np.float32) + 2 * y[:, None]
    head = FineTunedTailClassifier(tail, shape, max_epochs=30, learning_rate=1e-2, validation_fraction=0,
                                   random_state=0).fit(X, y)
    assert (head.predict(X) == y).mean() > 0.9
    tuned = head.module_[1].part.state_dict()
    assert all(torch.equal(before[k], v) for k, v in tail.state_dict().items())  # the given tail is untouched
    assert not torch.equal(tuned["3.weight"], before["3.weight"])  # its copy trained
    assert torch.equal(tuned["4.running_mean"], before["4.running_mean"])  # with the ImageNet statistics kept


def test_wrong_width_names_the_fix() -> None:
    tail, shape = build_tail(resolve_spec("tinycnn", layer="2", pool="none"))
    with pytest.raises(Exception, match="pass the --pool none extraction"):
        FineTunedTailClassifier(tail, shape).fit(np.zeros((4, 10), np.float32), [0, 1, 0, 1])


@pytest.fixture(scope="module")
def shades(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("finetune")
    rng = np.random.default_rng(0)
    for label, base in (("dark", 40), ("mid", 128), ("bright", 215)):
        for i in range(8):
            path = tmp / "shades" / label / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(rng.normal(base, 25, (36, 36, 3)), 0, 255).astype(np.uint8)).save(path)
    return tmp


def test_compare_adds_a_finetune_row_on_the_same_draws(shades: Path, tmp_path: Path, host: str) -> None:
    cache = tmp_path / "cache.h5"
    register_model("tinycnn", lambda weights=None, layer=None, pool="avg": finish(
        "tinycnn", Net(tiny_cnn(), PREPROCESS, "random-seed0", lambda model, pool: model), layer, pool))
    extract_dataset(shades / "shades", resolve_spec("tinycnn"), cache, options=ExtractOptions(workers=0))
    result = run_compare(cache, heads=["logreg"], per_class=[4], repeats=2, pixels=None, finetune=["2"],
                         out=tmp_path / "out", jobs=1)
    cells = {(c.features, c.head): c for c in result.cells}
    tinycnn, tail = on_host("tinycnn", host), on_host("tinycnn[2,none]", host)
    assert set(cells) == {(tinycnn, "logreg"), (tail, "finetune")}
    assert cells[tail, "finetune"].mean_std("accuracy")[0] >= 0.6  # chance: 1/3
    assert any(note.startswith("finetune cells:") for note in result.notes)
    with Store.open(cache) as store:  # the maps are cached: a second compare extracts nothing
        assert any(store.extractor_spec(fp).pool == "none" for fp in store.dataset_extractors("shades"))
    plain = run_compare(cache, heads=["logreg"], per_class=[4], repeats=2, pixels=None, out=tmp_path / "out")
    assert {c.features for c in plain.cells} == {tinycnn}  # cached maps are no row unless named
    named = run_compare(cache, models=[tinycnn, tail], heads=["logreg"], per_class=[4], repeats=2,
                        pixels=None, finetune=["2"], out=tmp_path / "out", jobs=1)
    assert {(c.features, c.head) for c in named.cells} == {(tinycnn, "logreg"), (tail, "logreg"), (tail, "finetune")}
    assert {c.head: c.scores for c in named.cells if c.head == "finetune"} == {"finetune": cells[tail, "finetune"].scores}


def test_training_starts_from_the_tuned_linear_probe() -> None:
    tail, shape = build_tail(resolve_spec("tinycnn", layer="2", pool="none"))
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 12)
    X = (rng.normal(size=(36, int(np.prod(shape)))) + y[:, None] * 0.5).astype(np.float32)
    probe_only = FineTunedTailClassifier(tail, shape, learning_rate=0.0, max_epochs=1, random_state=0).fit(X, y)
    with torch.no_grad():
        features = tail.eval()(torch.as_tensor(X).reshape(-1, *shape)).double().numpy()
    logreg = make_head("logreg", tune=True).fit(features, y)
    np.testing.assert_array_equal(probe_only.predict(X), logreg.predict(features))
    assert (logreg.predict(features) == y).mean() > 0.4


def test_unknown_layer_fails_before_any_work(shades: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache.h5"
    extract_dataset(shades / "shades", resolve_spec("tinycnn"), cache, options=ExtractOptions(workers=0))
    copy = tmp_path / "before.h5"
    shutil.copy(cache, copy)
    with pytest.raises(CompareError, match=r"^--finetune nope: no layer 'nope' in Sequential"):
        run_compare(cache, heads=["logreg"], per_class=[4], pixels=None, finetune=["nope"], out=tmp_path / "out")
    with Store.open(cache) as store:
        assert len(store.dataset_extractors("shades")) == 1
    with pytest.raises(CompareError, match="--finetune needs an embedding row"):
        run_compare(cache, models=[], heads=["logreg"], per_class=[4], pixels=8, finetune=["2"],
                    out=tmp_path / "out")


def _items(root: Path) -> tuple[np.ndarray, np.ndarray]:
    from bottleneck_features.images import sha256_file

    paths = sorted(root.rglob("*.png"))
    return (np.array([[sha256_file(p), str(p)] for p in paths], dtype=object),
            np.array([p.parent.name for p in paths]))


def test_the_whole_network_trains_on_augmented_images(shades: Path) -> None:
    from bottleneck_features.finetune import FineTunedNetworkClassifier

    X, y = _items(shades / "shades")
    spec = resolve_spec("tinycnn")
    before = {k: v.clone() for k, v in load_backbone("tinycnn").model.state_dict().items()}
    head = FineTunedNetworkClassifier(spec, learning_rate=1e-2, max_epochs=3, validation_fraction=0,
                                      random_state=0).fit(X, y)
    assert head.n_iter_ == 3 and (head.predict(X) == y).mean() >= 0.9
    tuned = head.module_[0].part.state_dict()
    assert not torch.equal(tuned["0.weight"], before["0.weight"])  # the first convolution trained too
    assert torch.equal(tuned["1.running_mean"], before["1.running_mean"])  # ImageNet statistics kept
    assert head.predict_proba(X).shape == (len(X), 3)


def test_the_whole_network_starts_from_the_probe(shades: Path) -> None:
    from bottleneck_features.finetune import FineTunedNetworkClassifier

    X, y = _items(shades / "shades")
    probe_only = FineTunedNetworkClassifier(resolve_spec("tinycnn"), learning_rate=0.0, max_epochs=1,
                                            validation_fraction=0, random_state=0).fit(X, y)
    report = extract_dataset(shades / "shades", resolve_spec("tinycnn"), shades / "probe.h5",
                             options=ExtractOptions(workers=0))  # the frozen features, made by extract
    frozen = load_features(shades / "probe.h5", report.dataset, report.fingerprint)
    rows = [frozen.shas.index(sha) for sha in X[:, 0]]
    features = frozen.X[rows].astype(np.float64)
    logreg = make_head("logreg", tune=True).fit(features, y)
    np.testing.assert_array_equal(probe_only.predict(X), logreg.predict(features))


def test_compare_finetune_all_trains_each_model_row_on_the_files(shades: Path, tmp_path: Path, host: str) -> None:
    data = tmp_path / "shades"
    shutil.copytree(shades / "shades", data)
    cache = tmp_path / "cache.h5"
    extract_dataset(data, resolve_spec("tinycnn"), cache, options=ExtractOptions(workers=0))
    options = dict(heads=["logreg"], per_class=[4], repeats=2, pixels=8, out=tmp_path / "out", jobs=1)
    result = run_compare(cache, finetune=["all"], **options)
    cells = {(c.features, c.head): c for c in result.cells}
    tinycnn = on_host("tinycnn", host)
    assert set(cells) == {(tinycnn, "logreg"), (tinycnn, "finetune"), ("raw8", "logreg"), ("raw8", "nb")}
    assert cells[tinycnn, "finetune"].mean_std("accuracy")[0] >= 0.6  # chance: 1/3
    assert any("--finetune all" in note for note in result.notes)
    again = run_compare(cache, finetune=["all"], **options)  # every fit is cached: the same scores
    assert {(c.features, c.head): c.scores for c in again.cells} == {k: c.scores for k, c in cells.items()}

    (data / "mid" / "0.png").write_bytes(b"not a png any more")  # extract skips it: no row of any set
    assert run_compare(cache, finetune=["all"], **options).notes[0].startswith("23 images")


def test_a_file_broken_since_extraction_names_itself(shades: Path, tmp_path: Path) -> None:
    from bottleneck_features.errors import FitError
    from bottleneck_features.finetune import FineTunedNetworkClassifier

    data = tmp_path / "shades"
    shutil.copytree(shades / "shades", data)
    X, y = _items(data)
    Path(X[5, 1]).write_bytes(b"<html>")
    with pytest.raises(FitError, match=rf"^{X[5, 1]}: .*run `bottleneck extract` again"):
        FineTunedNetworkClassifier(resolve_spec("tinycnn"), max_epochs=1).fit(X, y)


def test_finetune_all_needs_the_files_and_a_model_row(shades: Path, tmp_path: Path) -> None:
    data = tmp_path / "shades"
    shutil.copytree(shades / "shades", data)
    cache = tmp_path / "cache.h5"
    extract_dataset(data, resolve_spec("tinycnn"), cache, options=ExtractOptions(workers=0))
    with pytest.raises(CompareError, match="^--finetune all needs an embedding row"):
        run_compare(cache, models=[], heads=["logreg"], per_class=[4], pixels=8, finetune=["all"],
                    out=tmp_path / "out")
    shutil.rmtree(data)
    with pytest.raises(CompareError, match=r"^--finetune all trains on the image files, and .*shades is gone"):
        run_compare(cache, heads=["logreg"], per_class=[4], pixels=8, finetune=["all"], out=tmp_path / "out")
