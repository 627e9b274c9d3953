"""`bottleneck audit`: duplicates, train/test leakage, likely label errors and outliers, found from a
dataset's cached embeddings; no image is decoded (but for the report's thumbnails).

- duplicates: one sha256 under several paths;
- near-duplicates: distinct files whose embeddings' cosine similarity is `threshold` or more;
- either kind is flagged when its copies carry different labels, and is leakage when they sit in
  different splits (train and test or val);
- label issues: cleanlab's confident learning on out-of-fold probabilities of a cross-validated
  logistic regression, ranked by self-confidence;
- outliers: images whose 10 nearest neighbours are all far: mean cosine distance beyond Q3 + 1.7 IQR
  of every image's, cleanlab Datalab's outlier rule for features. The far-out fence, Q3 + 3 IQR,
  never fired: on photo_vs_drawing with 5 junk files it lay above the largest distance there was.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from .dataset_identity import dataset_input, input_present
from .errors import AuditError
from .evaluate import check_folds, check_stratified_folds
from .extraction import extract_dataset
from .heads import make_head
from .neighbours import cosine_neighbours
from .shards import image_addresses
from .sources import resolve_spec
from .store import Features, Store, load_features, select_extraction

# Lite0 puts re-encoded, resized copies at 0.84-0.98 (benchmarks/audit.py), different flags of
# openclipart22 at 0.85-0.89: a lower threshold finds more copies and more look-alikes. Below it,
# a pair down to CANDIDATE_FLOOR is a near-duplicate when its 32 x 32 thumbnails (raw32) correlate
# to PIXEL_THRESHOLD: the copies did (0.91-0.997), the set's other pairs above 0.8 did not (but one).
DEFAULT_THRESHOLD = 0.95
CANDIDATE_FLOOR, PIXEL_THRESHOLD, PIXELS = 0.8, 0.9, "raw32"
OUTLIER_K, OUTLIER_FENCE = 10, 1 / 0.37037 - 1  # Datalab's k and its features threshold as an IQR multiple
ISSUES = ("duplicate", "near-duplicate", "label-issue", "outlier")
LEAKAGE, LABELS_DIFFER = "leakage", "labels differ"


@dataclass
class Finding:
    issue: str  # one of ISSUES
    path: str  # relative to the dataset's root
    label: str
    split: str
    score: float  # duplicate 1, near-duplicate the similarity, label issue 1 - self-confidence, outlier the distance
    related: list[str] = field(default_factory=list)  # the other copies; the nearest image of an outlier
    flag: str = ""  # LEAKAGE or LABELS_DIFFER for (near-)duplicates
    suggested: str = ""  # label issues: the label the cross-validated head gives


@dataclass
class ClassSummary:
    label: str
    images: int
    counts: dict[str, int]  # issue → findings naming an image of this class (first path of a group)


@dataclass
class Audit:
    dataset: str
    root: Path | str
    extractor: str  # the label of the extraction audited
    findings: list[Finding]
    classes: list[ClassSummary]
    threshold: float
    seconds: float
    files: dict[str, Path] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)  # path → where its bytes are (shards.image_addresses)

    def to_records(self) -> list[dict]:
        return [asdict(f) for f in self.findings]


def run_audit(cache: Path, *, dataset: str | None = None, model: str | None = None,
              threshold: float = DEFAULT_THRESHOLD, folds: int = 5, k: int = 5, seed: int = 0,
              update: bool = True, extraction: tuple[str, str] | None = None) -> Audit:
    """Audit a cached dataset (default: the last extracted) with one of its extractions (default:
    its last; `model` a model name, label or fingerprint); `extraction`: the (dataset, fingerprint)
    `select_extraction` already found for them. `update`: first extract the raw32 thumbnails that
    confirm near-duplicates (`update_pixels`, the only step that writes); False audits the cache as
    it is, opening it read-only."""
    start = time.perf_counter()
    if not 0 < threshold <= 1:
        raise AuditError(f"--threshold {threshold}: a cosine similarity above 0 and at most 1, e.g. 0.95")
    check_folds(folds, "--folds", AuditError)
    name, fp = extraction or select_extraction(cache, dataset, model)
    features = load_features(cache, name, fp)
    if update:
        update_pixels(cache, name, features.root)
    findings = audit_features(features, threshold=threshold, folds=folds, k=k, seed=seed,
                              pixels=_pixels(cache, name, features))
    label = features.spec.label() if features.spec else fp
    return Audit(name, features.root, label, findings, summarise(features, findings), threshold,
                 time.perf_counter() - start, images=dict(zip(features.paths, image_addresses(cache, name, features.paths),
                                                              strict=True)))


def audit_features(features: Features, *, threshold: float = DEFAULT_THRESHOLD, folds: int = 5, k: int = 5,
                   seed: int = 0, pixels: np.ndarray | None = None) -> list[Finding]:
    """Every finding, grouped by issue, each issue's most certain first. `k`: the neighbours searched
    for near-duplicates (outliers use OUTLIER_K). `pixels`: each row's thumbnail (raw32, NaN where
    missing), which confirms near-duplicates below `threshold`."""
    _check(features, folds)
    first_row: dict[str, int] = {}
    copies: dict[str, list[int]] = defaultdict(list)
    for row, sha in enumerate(features.shas):
        first_row.setdefault(sha, row)
        copies[sha].append(row)
    findings = [_group_finding("duplicate", features, rows, 1.0) for rows in copies.values() if len(rows) > 1]
    unique = np.array(list(first_row.values()))
    neighbours = cosine_neighbours(features.X[unique], max(k, OUTLIER_K))
    findings += _near_duplicates(features, unique, neighbours.index[:, :k], neighbours.similarity[:, :k], threshold,
                                 None if pixels is None else pixels[unique])
    findings += _label_issues(features, folds, seed)
    findings += _outliers(features, unique, neighbours.index[:, :OUTLIER_K], neighbours.similarity[:, :OUTLIER_K])
    return findings


def _check(features: Features, folds: int) -> None:
    classes = np.unique(features.labels)
    if len(classes) < 2:
        raise AuditError(f"{features.root}: one class ({classes[0] if len(classes) else 'none'}); label checks "
                         "compare classes: audit a dataset with two or more class folders")
    check_stratified_folds(features.labels, folds, "--folds", AuditError)


def _group_finding(issue: str, features: Features, rows: list[int], score: float) -> Finding:
    """One finding for copies `rows` of one image: flagged when they cross splits or labels."""
    labels = {str(features.labels[r]) for r in rows}
    splits = {str(features.splits[r]) for r in rows}
    flag = LEAKAGE if len(splits) > 1 and "train" in splits else LABELS_DIFFER if len(labels) > 1 else ""
    first = rows[0]
    return Finding(issue, features.paths[first], str(features.labels[first]), str(features.splits[first]), score,
                   [features.paths[r] for r in rows[1:]], flag)


def update_pixels(cache: Path, name: str, root: Path | str) -> None:
    """The step before an audit, the only one that writes the cache: the dataset's raw32 thumbnails,
    extracted while its folder is there (about 1 ms an image, once)."""
    with Store.open(cache) as store:
        data, columns = dataset_input(store, name)  # its folder, or its label file
    if input_present(root) and input_present(data):
        extract_dataset(data, resolve_spec(PIXELS), cache, name=name, remember=False, columns=columns)


def _pixels(cache: Path, name: str, features: Features) -> np.ndarray | None:
    """The dataset's raw32 thumbnails in `features`' row order (NaN rows where missing), read only;
    None without them."""
    fp = resolve_spec(PIXELS).fingerprint()  # raw pixels: one spec on every host
    with Store.open(cache) as store:
        if fp not in store.dataset_extractors(name):
            return None
    raw = load_features(cache, name, fp)
    row_of = {path: i for i, path in enumerate(raw.paths)}
    pixels = np.full((len(features.paths), raw.X.shape[1]), np.nan, dtype=np.float32)
    for i, path in enumerate(features.paths):
        if path in row_of:
            pixels[i] = raw.X[row_of[path]]
    return pixels


def _near_duplicates(features: Features, rows: np.ndarray, index: np.ndarray, similarity: np.ndarray,
                     threshold: float, pixels: np.ndarray | None) -> list[Finding]:
    """Groups of distinct files around a leader, every member `threshold` or more similar to it
    (pairs taken most similar first; its score the group's lowest similarity to the leader), most
    similar groups first. Leaders, not connected components: on openclipart22 at 0.85, chains of
    similar pairs joined 71 flags into one group."""
    unit = _unit(features.X[rows])
    thumbnails = None if pixels is None else _unit(pixels - pixels.mean(axis=1, keepdims=True))  # correlation

    def same(a: int, b: int, similarity: float) -> bool:
        if similarity >= threshold:
            return True
        return (thumbnails is not None and similarity >= CANDIDATE_FLOOR
                and thumbnails[a] @ thumbnails[b] >= PIXEL_THRESHOLD)

    floor = threshold if thumbnails is None else min(threshold, CANDIDATE_FLOOR)  # the pairs worth a look
    leader_of: dict[int, int] = {}
    groups: dict[int, list[tuple[int, float]]] = {}
    for flat in np.argsort(-similarity, axis=None):
        a, column = divmod(int(flat), similarity.shape[1])
        b = int(index[a, column])
        if similarity[a, column] < floor:
            break
        if not same(a, b, float(similarity[a, column])):
            continue
        if a in leader_of and b in leader_of:
            continue
        if a not in leader_of and b not in leader_of:
            leader_of[a] = leader_of[b] = a
            groups[a] = [(b, float(similarity[a, column]))]
            continue
        joining, leader = (b, leader_of[a]) if a in leader_of else (a, leader_of[b])
        to_leader = float(unit[joining] @ unit[leader])
        if same(joining, leader, to_leader):
            leader_of[joining] = leader
            groups[leader].append((joining, to_leader))
    findings = [_group_finding("near-duplicate", features, [int(rows[leader])] + [int(rows[m]) for m, _ in members],
                               min(s for _, s in members)) for leader, members in groups.items()]
    return sorted(findings, key=lambda f: -f.score)


def _unit(X: np.ndarray) -> np.ndarray:
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def _label_issues(features: Features, folds: int, seed: int) -> list[Finding]:
    """cleanlab's confident learning on out-of-fold probabilities, most confident issues first."""
    from cleanlab.filter import find_label_issues

    classes, y = np.unique(features.labels, return_inverse=True)
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    probabilities = cross_val_predict(make_head("logreg", random_state=seed), features.X, y, cv=cv,
                                      method="predict_proba")
    ranked = find_label_issues(labels=y, pred_probs=probabilities, return_indices_ranked_by="self_confidence")
    return [Finding("label-issue", features.paths[i], str(classes[y[i]]), str(features.splits[i]),
                    float(1 - probabilities[i, y[i]]), suggested=str(classes[probabilities[i].argmax()]))
            for i in ranked]


def _outliers(features: Features, rows: np.ndarray, index: np.ndarray, similarity: np.ndarray) -> list[Finding]:
    distance = 1 - similarity.mean(axis=1)
    q1, q3 = np.percentile(distance, [25, 75])
    far = np.flatnonzero(distance > q3 + OUTLIER_FENCE * (q3 - q1))
    return [Finding("outlier", features.paths[rows[i]], str(features.labels[rows[i]]), str(features.splits[rows[i]]),
                    float(distance[i]), [features.paths[rows[index[i, 0]]]])
            for i in far[np.argsort(-distance[far])]]


def summarise(features: Features, findings: list[Finding]) -> list[ClassSummary]:
    label_of = dict(zip(features.paths, features.labels.astype(str), strict=True))
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(ISSUES, 0))
    for finding in findings:
        counts[label_of[finding.path]][finding.issue] += 1
    classes, images = np.unique(features.labels.astype(str), return_counts=True)
    return [ClassSummary(str(c), int(n), counts[str(c)]) for c, n in zip(classes, images, strict=True)]
