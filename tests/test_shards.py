"""WebDataset tar shards (paths, file:// and fsspec URLs) give the manifest and vectors a folder gives;
unchanged shards are not read again; bad samples and shards are reported, never fatal."""

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bottleneck_features import shards
from bottleneck_features.cli import app
from bottleneck_features.datasets import scan_dataset
from bottleneck_features.errors import DatasetError, ExtractError
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from bottleneck_features.label_files import LabelColumns
from bottleneck_features.sources import register_model
from bottleneck_features.store import Store, load_features
from tiny_backbone import tiny_backbone

QUIET = ExtractOptions(workers=0, batch_size=8)


def shard_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A tar of `members` as WebDataset writes one: KEY.EXT files, in sample order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def folder_to_shards(root: Path, n: int, label: str = "cls") -> list[list[tuple[str, bytes]]]:
    """The folder's images as `n` shards' members, the label as a `cls`, `txt` or `json` member."""
    entries = scan_dataset(root).entries
    members: list[list[tuple[str, bytes]]] = [[] for _ in range(n)]
    for i, entry in enumerate(entries):
        key = f"{i:06d}"
        ext = entry.path.rsplit(".", 1)[1]
        meta = {"cls": entry.label.encode(), "txt": entry.label.encode(),
                "json": json.dumps({"species": entry.label, "path": entry.path}).encode()}[label]
        members[i % n] += [(f"{key}.{ext}", (root / entry.path).read_bytes()), (f"{key}.{label}", meta)]
    return members


def write_shards(folder: Path, members: list[list[tuple[str, bytes]]], prefix: str = "train") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for i, shard in enumerate(members):
        (folder / f"{prefix}-{i:06d}.tar").write_bytes(shard_bytes(shard))
    return f"{folder}/{prefix}-{{000000..{len(members) - 1:06d}}}.tar"


def by_sha(cache: Path, name: str) -> dict[str, tuple[str, np.ndarray]]:
    with Store.open(cache) as store:
        fp = store.dataset_extractors(name)[0]
    f = load_features(cache, name, fp)
    return {sha: (label, x) for sha, label, x in zip(f.shas, f.labels, f.X, strict=True)}


def test_brace_ranges_expand_as_webdataset_writes_them() -> None:
    assert shards.expand_braces("s/a-{000008..000011}.tar") == [f"s/a-{i:06d}.tar" for i in range(8, 12)]
    assert shards.expand_braces("{a,b}-{1..2}.tar") == ["a-1.tar", "a-2.tar", "b-1.tar", "b-2.tar"]
    assert shards.expand_braces("one.tar") == ["one.tar"]
    with pytest.raises(DatasetError, match="must count up"):
        shards.expand_braces("a-{9..1}.tar")


def test_four_shards_give_the_folder_s_vectors_and_labels_computing_nothing(image_folder: Path, tmp_path: Path) -> None:
    cache, backbone = tmp_path / "c.h5", tiny_backbone()
    extract_dataset(image_folder, backbone, cache, options=QUIET)
    seen = backbone.model.images_seen
    pattern = write_shards(tmp_path / "shards", folder_to_shards(image_folder, 4))
    report = extract_dataset(pattern, backbone, cache, options=QUIET)
    assert (report.dataset, report.found, report.computed, report.reused) == ("shards", 18, 0, 18)
    assert backbone.model.images_seen == seen
    with Store.open(cache) as store:
        rows = store.read_manifest("shards")
        assert store.dataset_attrs("shards")["layout"] == "shards"
    assert rows[0].path == "train-000000.tar/000000" and {r.split for r in rows} == {""}  # all train: one pool
    assert by_sha(cache, "data").keys() == by_sha(cache, "shards").keys()
    for sha, (label, x) in by_sha(cache, "data").items():
        assert by_sha(cache, "shards")[sha][0] == label and np.array_equal(by_sha(cache, "shards")[sha][1], x)


def test_shards_alone_are_decoded_from_their_byte_ranges(image_folder: Path, tmp_path: Path) -> None:
    folder_cache, shard_cache = tmp_path / "a.h5", tmp_path / "b.h5"
    extract_dataset(image_folder, tiny_backbone(), folder_cache, options=QUIET)
    pattern = write_shards(tmp_path / "shards", folder_to_shards(image_folder, 3, "txt"))
    backbone = tiny_backbone()
    report = extract_dataset(pattern, backbone, shard_cache, options=QUIET)
    assert (report.computed, backbone.model.images_seen) == (18, 18)
    a, b = by_sha(folder_cache, "data"), by_sha(shard_cache, "shards")
    assert a.keys() == b.keys()
    for sha, (label, x) in a.items():
        assert b[sha][0] == label and np.allclose(b[sha][1], x)


def test_an_unchanged_shard_is_not_read_again_and_a_changed_one_is(
        image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "c.h5"
    pattern = write_shards(tmp_path / "shards", folder_to_shards(image_folder, 2))
    extract_dataset(pattern, tiny_backbone(), cache, options=QUIET)
    read = []
    real = shards.list_shard
    monkeypatch.setattr(shards, "list_shard", lambda shard, *a: read.append(shard) or real(shard, *a))
    assert extract_dataset(pattern, tiny_backbone(), cache, options=QUIET).computed == 0
    assert read == []
    first = tmp_path / "shards" / "train-000000.tar"
    os.utime(first, ns=(1, 1))
    assert extract_dataset(pattern, tiny_backbone(), cache, options=QUIET).computed == 0
    assert read == [str(first)]


def test_labels_from_json_by_label_key_and_the_cli(image_folder: Path, tmp_path: Path) -> None:
    members = folder_to_shards(image_folder, 2, "json")
    write_shards(tmp_path / "shards", members[:1], prefix="train")
    write_shards(tmp_path / "shards", members[1:], prefix="val")
    pattern = f"{tmp_path / 'shards'}/{{train,val}}-000000.tar"
    register_model("tiny-shards", lambda weights=None, layer=None, pool="avg": tiny_backbone())
    result = CliRunner().invoke(app, ["extract", pattern, "--model", "tiny-shards", "--cache", str(tmp_path / "c.h5"),
                                      "--label-key", "species", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "18 images found, 18 computed" in result.output
    with Store.open(tmp_path / "c.h5") as store:
        rows = store.read_manifest("shards")
    assert {r.label for r in rows} == {"cat", "dog", "owl"} and {r.split for r in rows} == {"train", "val"}
    assert {r.split for r in rows if r.path.startswith("val-")} == {"val"}
    no_key = extract_dataset(pattern, tiny_backbone(), tmp_path / "d.h5", options=QUIET)  # json's "label": absent
    assert no_key.unlabelled == 18


def test_bad_samples_and_shards_are_reported_not_fatal(image_folder: Path, tmp_path: Path) -> None:
    members = folder_to_shards(image_folder, 2)
    members[0] += [("lonely.cls", b"cat"), ("broken.jpg", b"not a jpeg"), ("broken.cls", b"cat"),
                   ("meta.jpg", (image_folder / "cat" / "cat1.jpg").read_bytes()), ("meta.json", b"{oops")]
    folder = tmp_path / "shards"
    pattern = write_shards(folder, members + [[]])  # a third, empty shard
    (folder / "train-000002.tar").unlink()  # ... now missing
    report = extract_dataset(pattern, tiny_backbone(), tmp_path / "c.h5", options=QUIET,
                             columns=LabelColumns(label_key="species"))
    left_out = dict(report.left_out)
    assert "no image member" in left_out["train-000000.tar/lonely"]
    assert "not valid JSON" in left_out["train-000000.tar/meta"]
    assert left_out["train-000002.tar"].startswith("cannot read file")
    assert dict(report.skipped)["train-000000.tar/broken"] == "not an image Pillow can read"
    assert report.found == 19 and report.computed == 18


def test_shards_through_fsspec_urls(image_folder: Path, tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    cache = tmp_path / "c.h5"
    extract_dataset(image_folder, tiny_backbone(), cache, options=QUIET)
    members = folder_to_shards(image_folder, 2)
    memory = fsspec.filesystem("memory")
    for i, shard in enumerate(members):
        memory.pipe(f"/bucket/set/train-{i:06d}.tar", shard_bytes(shard))
    backbone = tiny_backbone()
    report = extract_dataset("memory://bucket/set/train-{000000..000001}.tar", backbone, tmp_path / "m.h5",
                             options=QUIET)
    assert (report.dataset, report.computed, backbone.model.images_seen) == ("set", 18, 18)
    with Store.open(tmp_path / "m.h5") as store:
        assert store.dataset_root("set") == "memory://bucket/set"
    for sha, (label, x) in by_sha(cache, "data").items():
        assert by_sha(tmp_path / "m.h5", "set")[sha][0] == label
        assert np.allclose(by_sha(tmp_path / "m.h5", "set")[sha][1], x)
    url = "file://" + write_shards(tmp_path / "local", members)
    assert extract_dataset(url, tiny_backbone(), cache, options=QUIET).computed == 0


def test_a_compressed_shard_is_refused_with_the_fix(image_folder: Path, tmp_path: Path) -> None:
    (tmp_path / "a.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(Exception, match="write plain .tar shards"):
        extract_dataset(str(tmp_path / "a.tar.gz"), tiny_backbone(), tmp_path / "c.h5", options=QUIET)


def test_folders_and_label_files_at_urls(image_folder: Path, tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    cache = tmp_path / "c.h5"
    extract_dataset(image_folder, tiny_backbone(), cache, options=QUIET)
    memory = fsspec.filesystem("memory")
    entries = scan_dataset(image_folder).entries
    for entry in entries:
        memory.pipe(f"/photos/data/{entry.path}", (image_folder / entry.path).read_bytes())
    memory.pipe("/photos/data/.hidden/x.jpg", b"hidden")
    sheet = "path,label\n" + "".join(f"{e.path},{e.label}\n" for e in entries) + "../../etc/passwd,cat\ncat/gone.jpg,cat\n"
    memory.pipe("/photos/data/labels.csv", sheet.encode())
    backbone = tiny_backbone()
    with pytest.raises(ExtractError, match="already holds a dataset named 'data'"):  # same name, another place
        extract_dataset("memory://photos/data", backbone, cache, options=QUIET)
    folder = extract_dataset("memory://photos/data", backbone, cache, name="photos", options=QUIET)
    assert (folder.dataset, folder.found, folder.computed, backbone.model.images_seen) == ("photos", 18, 0, 0)
    url_cache = tmp_path / "u.h5"
    first = extract_dataset("memory://photos/data", tiny_backbone(), url_cache, options=QUIET)
    again = extract_dataset("memory://photos/data", backbone, url_cache, options=QUIET)
    assert (first.computed, again.computed, backbone.model.images_seen) == (18, 0, 0)
    with Store.open(url_cache) as store:
        assert store.dataset_root("data") == "memory://photos/data"
    labels = extract_dataset("memory://photos/data/labels.csv", backbone, url_cache, options=QUIET)
    assert (labels.dataset, labels.found, labels.computed) == ("labels", 18, 0)
    assert dict(labels.left_out) == {"line 20 (../../etc/passwd)": labels.left_out[0][1],
                                     "line 21 (cat/gone.jpg)": "missing: no such file"}
    assert "must be relative and stay inside" in labels.left_out[0][1]
    a, b = by_sha(cache, "data"), by_sha(url_cache, "labels")
    assert a.keys() == b.keys() and all(np.allclose(a[s][1], b[s][1]) and a[s][0] == b[s][0] for s in a)


def test_a_truncated_shard_keeps_its_whole_samples_and_a_fifo_is_not_read(image_folder: Path, tmp_path: Path) -> None:
    members = folder_to_shards(image_folder, 1)[0]
    members[:2] = [("<img src=x onerror=alert(1)>.jpg", members[0][1]), ("<img src=x onerror=alert(1)>.cls", b"=cmd|' /C calc'!A0")]
    folder = tmp_path / "shards"
    pattern = write_shards(folder, [members, members[:4]])
    whole = (folder / "train-000000.tar").read_bytes()
    (folder / "train-000000.tar").write_bytes(whole[:len(whole) // 2])  # cut in the middle of a member
    os.mkfifo(folder / "train-000002.tar")
    report = extract_dataset(f"{folder}/train-{{000000..000002}}.tar", tiny_backbone(), tmp_path / "c.h5", options=QUIET)
    left_out = dict(report.left_out)
    assert left_out["train-000000.tar"].startswith("cannot read file")
    assert left_out["train-000002.tar"] == "not a regular file (a pipe, device or socket); skipped"
    with Store.open(tmp_path / "c.h5") as store:
        rows = {r.path: r for r in store.read_manifest("shards")}
    hostile = rows["train-000000.tar/<img src=x onerror=alert(1)>"]
    assert hostile.label == "=cmd|' /C calc'!A0" and hostile.status == "ok"  # text, kept as given
    first = [p for p in rows if p.startswith("train-000000.tar/")]
    assert 1 < len(first) < 18 and all(rows[p].status == "ok" for p in first)  # the samples before the cut
    assert len([p for p in rows if p.startswith("train-000001.tar/")]) == 2
    assert pattern.endswith("{000000..000001}.tar")


def test_audit_compare_and_the_map_read_thumbnails_from_the_shards(image_folder: Path, tmp_path: Path) -> None:
    from bottleneck_features import api

    register_model("tiny", lambda weights=None, layer=None, pool="avg": tiny_backbone())
    members = folder_to_shards(image_folder, 2)
    members[1] += [("copy.jpg", members[0][0][1]), ("copy.cls", members[0][1][1])]  # a duplicate across shards
    pattern = write_shards(tmp_path / "shards", members)
    cache = tmp_path / "c.h5"
    api.extract(pattern, "tiny", cache=cache, workers=0)
    audit = api.audit(cache=cache, folds=2, out=tmp_path / "audit", embedding_map=False)
    duplicate = next(f for f in audit.findings if f.issue == "duplicate")
    assert {duplicate.path, *duplicate.related} == {"train-000000.tar/000000", "train-000001.tar/copy"}
    page = (tmp_path / "audit" / "audit.html").read_text()
    assert page.count('<img src="data:image/jpeg;base64,') >= 2 and "cannot read" not in page
    result = api.compare(cache=cache, heads=["logreg"], per_class=[2], repeats=1, pixels=None, out=tmp_path / "report",
                         embedding_map=False)
    assert result.root == tmp_path / "shards" and result.files["mistakes"].exists()
    pytest.importorskip("openTSNE")
    data = json.loads(api.embedding_map(cache=cache, out=tmp_path / "map.html").read_text().split(
        '<script type="application/json"', 1)[1].split(">", 1)[1].split("</script>", 1)[0])
    assert all(thumb.startswith("data:image/jpeg") for thumb in data["thumb"])
    assert set(data["url"]) == {""}  # nothing a browser can open inside a tar


def test_a_url_folder_is_listed_once_and_no_file_asked_alone(image_folder: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    for entry in scan_dataset(image_folder).entries:
        memory.pipe(f"/once/data/{entry.path}", (image_folder / entry.path).read_bytes())
    calls: list[str] = []
    for method in ("find", "info"):
        real = getattr(type(memory), method)
        monkeypatch.setattr(type(memory), method,
                            lambda self, path, *a, _real=real, _m=method, **k: calls.append(_m) or _real(self, path, *a, **k))
    extract_dataset("memory://once/data", tiny_backbone(), tmp_path / "c.h5", options=QUIET)
    assert calls.count("find") == 1 and "info" not in calls
