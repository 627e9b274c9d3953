"""bottleneck-features: frozen pretrained CNN features, cached once, with classical heads on top.

Installed as `bottleneck_features` (the `bottleneck` import name is pydata's Bottleneck, which pandas
uses). The Python API, loaded on first use:

    import bottleneck_features as bf
    bf.extract("data/", model="efficientnet_lite0")
    f = bf.load_features()          # f.X, f.y, f.paths (and f.to_frame() with pandas)
    bf.fit(head="logreg"); bf.predict("new/", head="cache/heads/data-logreg.joblib"); bf.compare()
"""

from typing import Any

from ._version import __version__ as __version__

__all__ = ["audit", "compare", "embedding_map", "export", "export_model", "extract", "fit", "load_features", "predict",
           "repair"]


def __getattr__(name: str) -> Any:
    """The API functions, imported when first asked for, so that `import bottleneck_features` is cheap."""
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
