"""Building blocks the sources share: weights files, strict loading, layer taps and pooling, the
offline messages. Imports torch; timm only where a layer is tapped."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import BackboneError, WeightsUnavailableError
from ..images import sha256_file
from ..registry import OFFLINE_HINT, Backbone
from ..spec import ExtractorSpec, Preprocess


@dataclass
class Net:
    """A full classifier with its weights loaded, before the head is cut off."""

    model: nn.Module
    preprocess: Preprocess
    weights_id: str
    trunk: Callable[[nn.Module, str], nn.Module] = field(repr=False)  # (full model, pool) -> features


def finish(name: str, net: Net, layer: str | None, pool: str) -> Backbone:
    """Cut `net` at `layer` (or its penultimate features), freeze it, and measure its feature width."""
    model = layer_model(net.model, layer, pool) if layer else net.trunk(net.model, pool)
    model.eval().requires_grad_(False)
    size = net.preprocess.input_size
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, size, size))
    return Backbone(model, ExtractorSpec(name, net.weights_id, net.preprocess, int(out.shape[1]), layer, pool))


def weights_cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def apply_weights(model: nn.Module, name: str, weights: str) -> str:
    """Load "random" (keep the init) or a state_dict file into `model`; return the weights_id."""
    if weights == "random":
        return "random"
    state, weights_id = read_weights(weights)
    load_strict(model, state, name)
    return weights_id


def read_weights(path_like: str) -> tuple[dict[str, torch.Tensor], str]:
    path = Path(path_like).expanduser()
    if not path.is_file():
        raise BackboneError(f"weights file not found: {path} (weights are None, 'random' or a state_dict file)")
    digest = sha256_file(path)
    try:
        if path.suffix == ".safetensors":
            import safetensors.torch

            obj: Any = safetensors.torch.load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch/safetensors raise many types for a corrupt or foreign file
        raise BackboneError(f"can't read weights file {path}: {first_line(e)}") from None
    while isinstance(obj, dict) and ("state_dict" in obj or "model" in obj):
        obj = obj.get("state_dict", obj.get("model"))
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BackboneError(f"{path} holds no state_dict (a dict of tensors, maybe under 'state_dict' or 'model')")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj, f"sha256:{digest}"


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    own = model.state_dict()
    problems = []
    for label, keys in (
        ("missing", [k for k in own if k not in state]),
        ("unexpected", [k for k in state if k not in own]),
        ("wrong shape", [k for k in own if k in state and state[k].shape != own[k].shape]),
    ):
        if keys:
            problems.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    if problems:
        raise BackboneError(f"weights don't fit {name}: " + "; ".join(problems) + " keys")
    model.load_state_dict(state)


def layer_model(model: nn.Module, layer: str, pool: str) -> Pooled:
    """Output of graph node `layer` (or the last node inside module `layer`), globally pooled."""
    import timm.models

    _graph_nodes(model, layer)
    return Pooled(timm.models.create_feature_extractor(model, [layer]), pool, node=layer)


def _graph_nodes(model: nn.Module, layer: str) -> list[str]:
    """The model's graph node names (eval mode), after checking that `layer` is among them."""
    import timm.models

    nodes = timm.models.get_graph_node_names(model)[1]  # eval-mode graph; timm's wrapper also traces timm models
    if layer not in nodes and not any(n.startswith(layer + ".") for n in nodes):
        tops = list(dict.fromkeys(n.split(".")[0] for n in nodes))
        raise BackboneError(
            f"no layer {layer!r} in {type(model).__name__}: try one of {', '.join(tops[-8:])} or a finer node "
            f"such as {nodes[len(nodes) // 2]} ({len(nodes)} nodes; see torchvision get_graph_node_names)"
        )
    return nodes


def split_tail(trunk: nn.Module, layer: str, input_size: int) -> tuple[nn.Module, tuple[int, ...]]:
    """The part of `trunk` after graph node `layer`, as a module from that node's output to the
    trunk's features (sharing its weights), and the shape of that output for one `input_size` image
    (what `--pool none` stores flat).

    Traced with torch.fx: the layer's node becomes the input, and everything only it needed goes.
    A node after `layer` that still reads an earlier activation (a skip connection across the cut)
    makes it no cut: an error names block boundaries to cut at instead."""
    import timm.models

    nodes = _graph_nodes(trunk, layer)
    full = timm.models.create_feature_extractor(trunk, {layer: "maps", nodes[-1]: "features"})
    with torch.inference_mode():
        shape = tuple(full(torch.zeros(1, 3, input_size, input_size))["maps"].shape[1:])
    graph = full.graph
    output = next(n for n in graph.nodes if n.op == "output")
    cut, features = output.args[0]["maps"], output.args[0]["features"]
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    with graph.inserting_before(inputs[0]):
        maps = graph.placeholder("maps")
    cut.replace_all_uses_with(maps)
    output.args = (features,)
    graph.eliminate_dead_code()
    if any(n.users for n in inputs):
        blocks = list(dict.fromkeys(".".join(n.split(".")[:2]) for n in nodes))
        raise BackboneError(f"layer {layer!r} is no cut: later layers also read activations from before it; "
                            f"cut at a block's output, e.g. one of {', '.join(blocks[-8:-3])}")
    for node in inputs:
        graph.erase_node(node)
    return torch.fx.GraphModule(full, graph), shape


class Pooled(nn.Module):
    """features(x) (or its `node` entry) reduced by `pool` over spatial dims: 4-D maps are taken as
    (B, C, H, W), 3-D outputs as tokens (B, N, C); 2-D outputs, and any with pool="none", flattened."""

    def __init__(self, features: nn.Module, pool: str, node: str | None = None) -> None:
        super().__init__()
        self.features, self.pool, self.node = features, pool, node

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)
        if self.node is not None:
            out = out[self.node]
        if out.ndim not in (3, 4) or self.pool == "none":
            return out.flatten(1)
        dims = (2, 3) if out.ndim == 4 else (1,)
        return out.mean(dims) if self.pool == "avg" else out.amax(dims)


# --- small helpers ------------------------------------------------------------------------------------


def reachable(url: str, timeout: float = 5.0) -> bool:
    """Can a connection to url's server be made (proxies from the environment apply)?"""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # the server answered
    except (OSError, ValueError):
        return False
    return True


def unavailable(name: str, where: str, reason: str) -> WeightsUnavailableError:
    """`where` says where the weights were looked for ("<file> are not in <dir>"), `reason` why no download."""
    return WeightsUnavailableError(
        f"{name}: pretrained weights {where} and {reason}. "
        f"Models that work offline: {OFFLINE_HINT}. "
        f"Fix: pass --weights FILE (a {name} state_dict), or run once with network to cache them."
    )


def url_filename(url: str) -> str:
    return Path(urlparse(url).path).name


def verified_sha256(path: Path, expected: str, name: str) -> str:
    if sha256_file(path) != expected:
        raise WeightsUnavailableError(f"{name}: {path} is not the expected file (sha256 differs); reinstall it")
    return f"sha256:{expected}"


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
