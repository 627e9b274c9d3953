"""`extract --engine ray`: the images the cache lacks are read, decoded and embedded by Ray Data on a
Ray cluster, and the vectors stream back to the driver, the cache's only writer.

Stages: the (key, path) rows the driver sends → an actor pool, each actor holding the backbone,
loaded once, reading and decoding its batches as the local engine does (a failure a row with its
reason) and embedding them → the driver, which appends each batch to HDF5 as it arrives. Decoding
in the actor, not in separate tasks, moves paths instead of decoded pixels through the object store,
and cannot starve: decode tasks wait for CPUs that a pool of CPU actors may hold. One writer, not shards merged later:
HDF5 has no concurrent writers, and a batch of vectors (1280 floats an image) is small beside
the image it came from, so the driver's link is not the bound until thousands of images a second
(benchmarks/RESULTS.md). Every node must see the image paths (a shared filesystem) and have this
package installed.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch

from .augment import parse_augment
from .decode import DecodeDataset, alternating_batches
from .errors import ExtractError
from .inference import forward_batch, prepare_model
from .registry import Backbone
from .runtime import AUTOCAST, HARDWARE_ENV, auto_precision

INSTALL_HINT = "pip install 'bottleneck-features[ray]'"


def connect(address: str | None) -> None:
    """Join the Ray cluster at `address` ("auto": the one `ray start` runs here; ray://HOST:PORT: a
    Ray Client server), or start a local instance when None; a session already open is kept."""
    try:
        import ray
    except ImportError:
        raise ExtractError(f"--engine ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    if ray.is_initialized():
        return
    if address not in (None, "auto"):
        _check_reachable(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ExtractError(f"--address {address}: {str(exc).splitlines()[0]}; start a cluster with "
                           "`ray start --head`, or leave out --address for a local one") from None


def _check_reachable(address: str) -> None:
    """Fail in seconds on an address nothing listens at (ray.init would retry for a minute or more)."""
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise ExtractError(f"--address {address}: give auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        raise ExtractError(f"--address {address}: cannot reach {host}:{port} ({exc.strerror or exc}); "
                           "is `ray start --head` running there?") from None


PROBE_SECONDS = 120.0


def worker_precision(model: str, *, cpus_per_actor: int, gpus_per_actor: float) -> tuple[str, str]:
    """(precision, why) for `--precision auto` on the cluster: every alive node with room for an
    actor says what it computes natively, in a task of an actor's shape (so a GPU actor's probe sees
    its GPU), before any batch is sent; `agree` turns the answers into one precision for all."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= cpus_per_actor
             and n["Resources"].get("GPU", 0) >= gpus_per_actor]
    pinned = os.environ.get(HARDWARE_ENV)
    probe = ray.remote(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor,
                       runtime_env={"env_vars": {HARDWARE_ENV: pinned}} if pinned is not None else {}
                       )(_native_precision)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
        model, gpus_per_actor > 0) for node in nodes]
    if not refs:
        return agree([], 0)
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=PROBE_SECONDS)
    return agree([ray.get(ref) for ref in ready], len(refs))


def _native_precision(model: str, gpu: bool) -> tuple[str, str]:
    """Run on a Ray node: what `--precision auto` picks there."""
    return auto_precision(torch.device("cuda" if gpu else "cpu"), model=model)


def agree(answers: Sequence[tuple[str, str]], asked: int) -> tuple[str, str]:
    """One (precision, why) for a cluster from each node's own: theirs when all agree, fp32 when they
    differ or a node did not answer, so that every vector of a run is computed the same way."""
    if asked == 0:
        return "fp32", "no Ray node has room for an actor to say what it computes natively"
    if len(answers) < asked:
        return "fp32", (f"{asked - len(answers)} of {asked} Ray nodes did not say what they compute natively "
                        f"within {PROBE_SECONDS:.0f} s")
    chosen = {precision for precision, _ in answers}
    if len(chosen) == 1:
        return answers[0][0], f"{'the Ray node' if asked == 1 else f'all {asked} Ray nodes'}: {answers[0][1]}"
    counts = ", ".join(f"{sum(p == c for p, _ in answers)} {c}" for c in sorted(chosen))
    return "fp32", f"the Ray nodes differ ({counts}), and one run's vectors are computed one way"


def embed(todo: Sequence[tuple[str, str]], views: Sequence[tuple[str, int]] | None, backbone: Backbone,
          *, batch_size: int, actors: int, cpus_per_actor: int, gpus_per_actor: float,
          write: Callable[[list[str], np.ndarray], None], fail: Callable[[str, str], None],
          progress: Callable[[int], None]) -> None:
    """Embed `todo` ((key, path) pairs; with an augmented spec, `views[i]` is the (sha256, view)
    that todo[i] is) on the connected cluster: each batch of vectors goes to `write` as it arrives,
    each file that fails to decode to `fail` with its reason, the number done so far to `progress`."""
    import ray

    rows = [{"key": key, "path": path, "sha": (views[i][0] if views else key), "view": (views[i][1] if views else -1)}
            for i, (key, path) in enumerate(todo)]
    vectors = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // batch_size, 10_000))).map_batches(
        _Embedder, fn_constructor_kwargs={"backbone": backbone, "gpu": gpus_per_actor > 0, "threads": cpus_per_actor},
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None,
        batch_size=batch_size, batch_format="numpy")  # Ray Data restarts a lost actor, retrying its batches
    done = 0
    for batch in vectors.iter_batches(batch_size=None, batch_format="numpy"):
        ok = batch["error"] == ""
        if ok.any():
            write([str(k) for k in batch["key"][ok]], batch["vector"][ok])
        for key, error in zip(batch["key"][~ok], batch["error"][~ok], strict=True):
            fail(str(key), str(error))
        done += len(ok)
        progress(done)


class _Embedder:
    """A Ray actor holding the backbone, prepared as the local engine prepares it: it reads and
    decodes each batch in `threads` threads (as the local engine does, PIL releasing the GIL), then
    embeds it; a file that fails is a row with its reason."""

    def __init__(self, backbone: Backbone, gpu: bool, threads: int) -> None:
        self.device = torch.device("cuda" if gpu else "cpu")
        torch.set_num_threads(threads)
        self.model = prepare_model(backbone, self.device)
        self.spec, self.threads = backbone.spec, threads
        self.autocast = AUTOCAST[backbone.spec.precision]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        spec = self.spec
        dataset = DecodeDataset(list(zip(batch["key"], batch["path"], strict=True)), spec.preprocess,
                                parse_augment(spec.augment) if spec.augment else None,
                                list(zip(batch["sha"], batch["view"].tolist(), strict=True)))
        indices, pixels, failed = next(alternating_batches(dataset, len(dataset), self.threads))
        vectors = np.zeros((len(dataset), int(spec.feature_dim or 0)), dtype=np.float32)
        if pixels is not None:
            with torch.inference_mode():
                out = forward_batch(self.model, spec.preprocess, pixels, self.device, self.autocast)
            vectors[indices] = out.float().cpu().numpy()
        errors = np.full(len(dataset), "", dtype=object)
        for i, reason in failed:
            errors[i] = reason
        return {"key": batch["key"], "vector": vectors, "error": errors}
