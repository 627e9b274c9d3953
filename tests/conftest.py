from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"

# The hosts the suite runs as, whatever it runs on: what `--precision auto` is told about the hardware
# (runtime.HARDWARE_ENV), on the CPU and on a CUDA device alike. Every test runs as the default host
# (BOTTLENECK_TEST_HOST, else no-bf16) unless it asks for another through the `host` fixture; the
# flows that matter are marked every_host and run as each. Set here, at import, so that child
# processes, Ray workers and session fixtures see the same host.
SIMULATED_HOSTS = {
    "no-bf16": "avx2 fma",  # AMD EPYC up to Zen 3, Xeons before Cooper Lake: fp32 (and on a GPU)
    "bf16": "avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile cuda=8.0",  # Sapphire Rapids, Zen 4, A100 on: bf16
}
DEFAULT_HOST = os.environ.get("BOTTLENECK_TEST_HOST", "no-bf16")
os.environ["BOTTLENECK_HARDWARE"] = SIMULATED_HOSTS[DEFAULT_HOST]


@pytest.fixture(autouse=True)
def host(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The simulated host this test runs as (see SIMULATED_HOSTS)."""
    name = getattr(request, "param", DEFAULT_HOST)
    monkeypatch.setenv("BOTTLENECK_HARDWARE", SIMULATED_HOSTS[name])
    return name


@pytest.fixture(autouse=True)
def registered_models_forgotten() -> Iterator[None]:
    """What a test registers (`register_model("tiny", ...)`) is gone after it."""
    from bottleneck_features.sources import registration_scope

    with registration_scope():
        yield


def on_host(label: str, host: str) -> str:
    """The label an extraction made under precision auto has on `host`: `tiny[conv,max]` is
    `tiny[conv,max,bf16]` where bf16 is native (the precision goes before dtype, decoder and augment)."""
    if host == "no-bf16":
        return label
    model, _, rest = label.partition("[")
    parts, _, suffix = rest.partition("]") if rest else ("", "", "")
    names = parts.split(",") if parts else []
    at = next((i for i, p in enumerate(names) if p in ("float16", "torchvision") or p.startswith("augment=")),
              len(names))
    names.insert(at, "bf16")
    return f"{model}[{','.join(names)}]{suffix}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("every_host"):
        metafunc.parametrize("host", list(SIMULATED_HOSTS), indirect=True)


def write_image(path: Path, seed: int, size: tuple[int, int] = (48, 40), fmt: str | None = None,
                mode: str = "RGB") -> Path:
    """A reproducible noise image; each seed gives different content (and sha256)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path, format=fmt)
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """DATA/<class>/<images>: 3 classes × 6 small JPEG/PNG images."""
    root = tmp_path / "data"
    for c, label in enumerate(["cat", "dog", "owl"]):
        for i in range(6):
            suffix = ".png" if i % 3 == 0 else ".jpg"
            write_image(root / label / f"{label}{i}{suffix}", seed=100 * c + i)
    return root


@pytest.fixture
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def lite0_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache with photo_vs_drawing and hymenoptera extracted by EfficientNet-Lite0 (real weights), once per session."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS}")
    from bottleneck_features.errors import BackboneError
    from bottleneck_features.extraction import ExtractOptions, extract_dataset
    from bottleneck_features.sources import load_backbone

    try:
        backbone = load_backbone("efficientnet_lite0")
    except BackboneError as exc:
        pytest.skip(f"efficientnet_lite0 weights unavailable: {exc}")
    cache = tmp_path_factory.mktemp("lite0") / "bottleneck.h5"
    for name in ["photo_vs_drawing", "hymenoptera"]:
        extract_dataset(SHARED_DATASETS / name, backbone, cache, options=ExtractOptions())
    return cache
