"""--precision auto: bf16 where the hardware computes it natively, fp16 on CUDA 7.x, fp32 elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import bottleneck_features.runtime as runtime
from bottleneck_features import api
from bottleneck_features.runtime import Hardware, auto_precision, detect_hardware
from bottleneck_features.sources import register_model
from tiny_backbone import tiny_backbone

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})


@pytest.mark.parametrize(("device", "hardware", "chosen"), [
    (CPU, Hardware(frozenset({"avx2", "fma"})), "fp32"),
    (CPU, Hardware(frozenset({"avx512f", "avx512_vnni"})), "fp32"),  # AVX-512 without BF16
    (CPU, Hardware(frozenset({"avx512f", "avx512_bf16"})), "bf16"),  # Cooper Lake, Zen 4
    (CPU, Hardware(SAPPHIRE_RAPIDS), "bf16"),
    (CPU, Hardware(), "fp32"),  # no /proc/cpuinfo
    (CUDA, Hardware(cuda_capability=(9, 0)), "bf16"),  # H100
    (CUDA, Hardware(cuda_capability=(8, 0)), "bf16"),  # A100
    (CUDA, Hardware(cuda_capability=(7, 5)), "fp16"),  # T4
    (CUDA, Hardware(cuda_capability=(6, 1)), "fp32"),  # P4
    (torch.device("mps"), Hardware(SAPPHIRE_RAPIDS), "fp32"),
])
def test_auto_picks_what_the_hardware_computes_natively(device: torch.device, hardware: Hardware,
                                                        chosen: str) -> None:
    precision, why = auto_precision(device, hardware)
    assert precision == chosen and why


def test_detection_reads_this_machines_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real /proc/cpuinfo, not the simulated host (whatever this machine is, it has SSE2 or none)."""
    monkeypatch.delenv(runtime.HARDWARE_ENV)
    flags = detect_hardware(CPU).cpu_flags
    assert flags == runtime._cpu_flags() and ("sse2" in flags or not Path("/proc/cpuinfo").exists())


@pytest.fixture
def tiny() -> None:
    register_model("tiny", lambda weights=None, layer=None, pool="avg": tiny_backbone())


def test_extract_says_which_precision_ran_and_why(image_folder: Path, tmp_path: Path, tiny: None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "detect_hardware", lambda device: Hardware(frozenset({"avx2"})))
    report = api.extract(image_folder, "tiny", cache=tmp_path / "c.h5")
    assert report.summary().endswith("; precision fp32, auto: this CPU has no native bf16 (AVX-512 BF16 or AMX)")
    monkeypatch.setattr(runtime, "detect_hardware", lambda device: Hardware(SAPPHIRE_RAPIDS))
    bf16 = api.extract(image_folder, "tiny", cache=tmp_path / "c.h5")
    assert "precision bf16, auto: this CPU computes bf16 natively (amx_bf16, avx512_bf16)" in bf16.summary()
    assert bf16.fingerprint != report.fingerprint  # bf16 vectors are cached apart from fp32's
    monkeypatch.setattr(runtime, "BF16_GUARD_FAILED", frozenset({"tiny"}))
    guarded = api.extract(image_folder, "tiny", cache=tmp_path / "c.h5")
    assert guarded.fingerprint == report.fingerprint and "failed the accuracy guard" in guarded.summary()
    assert api.extract(image_folder, "tiny", cache=tmp_path / "c.h5", precision="fp32").precision == ""


def test_a_bad_device_is_still_one_line_under_auto(image_folder: Path, tmp_path: Path, tiny: None) -> None:
    from bottleneck_features.errors import ExtractError

    with pytest.raises(ExtractError, match="^--device tpu: use one of"):
        api.extract(image_folder, "tiny", cache=tmp_path / "c.h5", device="tpu")


def _paths_that_extract(image_folder: Path, cache: Path) -> dict:
    """Each way a folder gets extracted, with every option at its default; each returns (fingerprint, computed)."""
    from bottleneck_features.comparison import run_compare
    from bottleneck_features.extraction import extract_dataset
    from bottleneck_features.sources import resolve_spec
    from bottleneck_features.store import Store

    def by_compare() -> tuple[str, int]:
        if not cache.exists():  # compare needs the dataset in the cache: raw pixels put it there
            extract_dataset(image_folder, resolve_spec("raw8"), cache)
        run_compare(cache, models=["tiny"], heads=["knn"], per_class=[2], repeats=1, pixels=None,
                    out=cache.parent / "report")
        with Store.open(cache) as store:
            (fp,) = store.match_extractors("data", "tiny")
            return fp, -1  # compare does not report what it computed: counted by the CLI run before or after

    def by_dataset(extractor) -> tuple[str, int]:  # noqa: ANN001
        report = extract_dataset(image_folder, extractor, cache)
        return report.fingerprint, report.computed

    return {
        "bf.extract": lambda: (lambda r: (r.fingerprint, r.computed))(api.extract(image_folder, "tiny", cache=cache)),
        "extract_dataset(spec)": lambda: by_dataset(resolve_spec("tiny")),
        "extract_dataset(backbone)": lambda: by_dataset(tiny_backbone()),
        "compare": by_compare,
    }


def _cli_extract(image_folder: Path, cache: Path) -> tuple[str, int]:
    from typer.testing import CliRunner

    from bottleneck_features.cli import app
    from bottleneck_features.store import Store

    result = CliRunner().invoke(app, ["extract", str(image_folder), "--model", "tiny", "--cache", str(cache)])
    assert result.exit_code == 0, result.output
    with Store.open(cache) as store:
        fp = store.last_run()[1]
    return fp, int(result.output.split(" images found, ")[1].split(" computed")[0])


@pytest.mark.every_host
@pytest.mark.parametrize("path", ["bf.extract", "extract_dataset(spec)", "extract_dataset(backbone)", "compare"])
def test_every_path_that_extracts_reuses_the_others_folder(image_folder: Path, tmp_path: Path, tiny: None,
                                                          path: str, host: str) -> None:
    """One host, one precision, whoever extracts: the CLI's extract computes nothing after any other
    path, and every other path computes nothing after the CLI's."""
    first, second = tmp_path / "first.h5", tmp_path / "second.h5"
    fp, _ = _paths_that_extract(image_folder, first)[path]()
    assert _cli_extract(image_folder, first) == (fp, 0)
    cli_fp, computed = _cli_extract(image_folder, second)
    assert (cli_fp, computed) == (fp, 18)
    again, computed = _paths_that_extract(image_folder, second)[path]()
    assert again == fp and computed in (0, -1)
    from bottleneck_features.store import Store

    with Store.open(second) as store:
        assert store.count(fp) == 18 and len(store.extractors()) == 1  # nothing computed again elsewhere
        assert store.extractor_spec(fp).precision == {"no-bf16": "fp32", "bf16": "bf16"}[host]


@pytest.mark.every_host
def test_raw_pixels_are_one_extraction_on_every_host(image_folder: Path, tmp_path: Path, tiny: None) -> None:
    """The CLI, compare and audit share one raw32 group, labelled raw32, whatever the host computes."""
    from typer.testing import CliRunner

    from bottleneck_features.cli import app
    from bottleneck_features.store import Store

    cache = tmp_path / "c.h5"
    for args in (["extract", str(image_folder), "--model", "raw32"], ["extract", str(image_folder), "--model", "tiny"],
                 ["compare", "--heads", "knn", "--per-class", "2", "--repeats", "1", "--out", str(tmp_path / "r")],
                 ["audit", "--out", str(tmp_path / "a")]):
        result = CliRunner().invoke(app, [*args, "--cache", str(cache)])
        assert result.exit_code == 0, result.output
    with Store.open(cache) as store:
        raw = [fp for fp in store.extractors() if store.extractor_spec(fp).model == "raw32"]
        assert raw == ["raw32-5dcfc66f797a5c01"] and store.extractor_spec(raw[0]).label() == "raw32"


@pytest.mark.parametrize(("answers", "asked", "chosen", "why"), [
    ([("bf16", "this CPU computes bf16 natively (amx_bf16)")] * 3, 3, "bf16", "all 3 Ray nodes: this CPU computes"),
    ([("bf16", "CUDA compute capability 9.0 computes bf16 natively")], 1, "bf16", "the Ray node: CUDA"),
    ([("fp32", "this CPU has no native bf16 (AVX-512 BF16 or AMX)")] * 2, 2, "fp32", "all 2 Ray nodes: this CPU has no"),
    ([("bf16", "a"), ("fp32", "b"), ("bf16", "c")], 3, "fp32", "the Ray nodes differ (2 bf16, 1 fp32)"),
    ([("bf16", "a")], 2, "fp32", "1 of 2 Ray nodes did not say what they compute natively"),
    ([], 0, "fp32", "no Ray node has room for an actor"),
])
def test_a_cluster_runs_bf16_only_where_every_node_computes_it(answers: list, asked: int, chosen: str,
                                                               why: str) -> None:
    from bottleneck_features.ray_engine import agree

    precision, reason = agree(answers, asked)
    assert precision == chosen and reason.startswith(why)


def test_the_simulated_host_replaces_detection_and_bad_values_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from bottleneck_features.errors import ExtractError

    monkeypatch.setenv(runtime.HARDWARE_ENV, "avx512_bf16 cuda=7.5")
    assert detect_hardware(CUDA) == Hardware(frozenset({"avx512_bf16"}), (7, 5))
    assert auto_precision(CUDA) == ("fp16", "CUDA compute capability 7.5: fp16 tensor cores, no bf16")
    assert auto_precision(CPU)[0] == "bf16"
    monkeypatch.setenv(runtime.HARDWARE_ENV, "avx2 cuda=eight")
    with pytest.raises(ExtractError, match="^BOTTLENECK_HARDWARE='avx2 cuda=eight': write a CUDA capability as"):
        detect_hardware(CPU)
