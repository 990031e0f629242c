"""Cross-validation folds grouped by patient and stratified by label, saved so every run reuses them.

The ThyroidXL protocol (``spec/data.md``): 3-fold cross-validation inside the official train split,
grouped by patient (no patient in two folds) and stratified by TI-RADS as far as grouping allows.

Algorithm of :func:`grouped_folds` (a greedy bin-packing of groups, deterministic by ``seed``):

1. Each group (patient) is summarised by its class histogram ``g`` (images per label). The target of a
   fold is ``t = N / k``, the whole data set's histogram divided by the number of folds ``k``.
2. Groups are visited largest first; groups of equal size are visited in a seeded random order.
3. A group goes to the fold whose histogram ``n_f`` deviates least from the target once the group is
   added, measured by the chi-square distance ``sum_c (n_fc + g_c - t_c)**2 / t_c`` minus the same
   distance before adding it (only that fold changes). Dividing by ``t_c`` weighs a rare class (TR1) by
   its relative, not absolute, error, and the target in counts keeps fold sizes balanced as well as
   class shares. Ties between folds are broken by a seeded random fold order.
4. A refinement pass then moves single groups to another fold while that lowers the total distance
   (groups in the seeded order, at most ``_MAX_REFINE_PASSES`` sweeps), which repairs the early greedy
   choices that the largest groups forced.

An empty fold always has the smallest cost increase, so with at least ``k`` groups no fold ends empty
(this is checked). The seed only changes the order among equally sized groups and the tie-breaks, so
different seeds give different but equally balanced folds. ``sklearn``'s ``StratifiedGroupKFold`` follows
a similar greedy (groups by decreasing spread of their class histogram, fold chosen to minimise the spread
of class shares across folds) but has no refinement pass and would make scikit-learn a core dependency;
this greedy is pinned by our own tests instead.

Files (:func:`save_folds` / :func:`load_folds`): a JSON written atomically (temp file, fsync,
``os.replace``) with the ids, labels, optional groups, fold per id, the caller's ``meta`` and
``data_hash``, the SHA-256 of the sorted ``(id, label)`` pairs. Loading with the ids (and labels) of the
current data set verifies them and returns the folds in the caller's id order; a changed data set raises
a ``ValueError`` naming the file. :func:`load_or_create_folds` is the entry point a runner uses: the first
run writes the file, every later run and every other method reads identical folds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtlbench import atomic

__all__ = [
    "FOLDS_FORMAT_VERSION",
    "SavedFolds",
    "data_hash",
    "fold_class_shares",
    "fold_splits",
    "grouped_folds",
    "load_folds",
    "load_or_create_folds",
    "save_folds",
]

FOLDS_FORMAT_VERSION = 1
_MAX_REFINE_PASSES = 20


def _check_n_folds(n_folds: int) -> int:
    if isinstance(n_folds, bool) or int(n_folds) != n_folds or n_folds < 2:
        raise ValueError(f"Parameter `n_folds` should be an integer >= 2. Found `n_folds = {n_folds!r}`.")
    return int(n_folds)


def grouped_folds(
    groups: Sequence[str], labels: Sequence[int], n_folds: int = 3, seed: int = 0
) -> np.ndarray:
    """Fold index in ``0..n_folds-1`` per sample: no group in two folds, class shares close to the whole.

    ``groups[i]`` is the group (patient id) of sample ``i``, ``labels[i]`` its class (any integers; a
    group may mix classes). Deterministic in ``(groups, labels, n_folds, seed)``; see the module docstring
    for the algorithm. Raises ``ValueError`` for ``n_folds < 2``, mismatched lengths, or fewer distinct
    groups than folds.
    """
    k = _check_n_folds(n_folds)
    groups_arr = np.asarray([str(g) for g in groups])
    labels_arr = np.asarray(labels)
    if groups_arr.shape[0] != labels_arr.shape[0] or labels_arr.ndim != 1:
        raise ValueError(
            "Parameters `groups` and `labels` should be 1-d sequences of equal length. "
            f"Found `len(groups) = {groups_arr.shape[0]}`, `labels.shape = {labels_arr.shape}`."
        )
    group_names, group_of = np.unique(groups_arr, return_inverse=True)
    n_groups = len(group_names)
    if n_groups < k:
        raise ValueError(
            f"Cannot split {n_groups} groups into {k} folds: need at least `n_folds = {k}` distinct groups, "
            f"found {n_groups} (from {len(groups_arr)} samples)."
        )
    _, class_of = np.unique(labels_arr, return_inverse=True)
    n_classes = int(class_of.max()) + 1
    hist = np.zeros((n_groups, n_classes), dtype=np.float64)
    np.add.at(hist, (group_of, class_of), 1.0)
    target = hist.sum(axis=0) / k  # every class has >= 1 sample, so target > 0

    rng = np.random.default_rng(np.random.SeedSequence(int(seed)))
    # Largest first; equal sizes in a seeded random order (lexsort: last key is the primary one).
    order = np.lexsort((rng.permutation(n_groups), -hist.sum(axis=1)))
    fold_rank = rng.permutation(k)  # tie-break between equally good folds

    counts = np.zeros((k, n_classes), dtype=np.float64)
    assign = np.empty(n_groups, dtype=np.int64)
    for position, g in enumerate(order):
        h = hist[g]
        # Increase of sum_c (n_fc - t_c)^2 / t_c when adding h to fold f.
        delta = ((h * h + 2.0 * h * (counts - target)) / target).sum(axis=1)
        empty = np.flatnonzero(counts.sum(axis=1) == 0)
        if len(empty) >= n_groups - position:  # as many groups left as empty folds: fill those first
            delta = np.where(counts.sum(axis=1) == 0, delta, np.inf)
        best = np.flatnonzero(np.isclose(delta, delta.min(), rtol=0.0, atol=1e-9))
        f = int(best[np.argmin(fold_rank[best])])
        assign[g] = f
        counts[f] += h

    for _ in range(_MAX_REFINE_PASSES):
        moved = False
        for g in order:
            h, src = hist[g], assign[g]
            if np.count_nonzero(assign == src) == 1:
                continue  # never empty a fold
            removal = ((h * h - 2.0 * h * (counts[src] - target)) / target).sum()
            gain = ((h * h + 2.0 * h * (counts - target)) / target).sum(axis=1) + removal
            gain[src] = 0.0
            dst = int(np.argmin(gain))
            if gain[dst] < -1e-9:
                counts[src] -= h
                counts[dst] += h
                assign[g] = dst
                moved = True
        if not moved:
            break

    folds = assign[group_of]
    if len(np.unique(folds)) != k:  # pragma: no cover - guaranteed by the cost, kept as a guard
        raise RuntimeError(f"grouped_folds produced an empty fold (n_folds = {k}, groups = {n_groups}).")
    return folds


def fold_class_shares(folds: np.ndarray, labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(classes, shares, whole)``: per-fold class shares ``(k, C)`` and the whole set's shares ``(C,)``.

    A diagnostic for reports: ``abs(shares - whole).max()`` is the worst stratification error.
    """
    folds = np.asarray(folds)
    labels_arr = np.asarray(labels)
    classes, class_of = np.unique(labels_arr, return_inverse=True)
    k = int(folds.max()) + 1
    counts = np.zeros((k, len(classes)))
    np.add.at(counts, (folds, class_of), 1.0)
    shares = counts / counts.sum(axis=1, keepdims=True)
    whole = counts.sum(axis=0) / counts.sum()
    return classes, shares, whole


def fold_splits(folds: np.ndarray | Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, val_idx)`` for fold ``k``: validation = the samples of fold ``k``, train = the rest."""
    folds = np.asarray(folds)
    n_folds = int(folds.max()) + 1 if folds.size else 0
    if isinstance(k, bool) or int(k) != k or not 0 <= int(k) < n_folds:
        raise ValueError(f"Parameter `k` should be a fold index in 0..{n_folds - 1}. Found `k = {k!r}`.")
    val = folds == int(k)
    return np.flatnonzero(~val), np.flatnonzero(val)


def data_hash(ids: Sequence[str], labels: Sequence[int] | None = None) -> str:
    """SHA-256 of the sorted ``(id, label)`` pairs: independent of sample order, sensitive to any change."""
    ids_list = [str(i) for i in ids]
    labels_list = [None] * len(ids_list) if labels is None else [int(v) for v in labels]
    if len(labels_list) != len(ids_list):
        raise ValueError(
            f"Parameters `ids` and `labels` should have equal length. Found {len(ids_list)} and "
            f"{len(labels_list)}."
        )
    pairs = sorted(zip(ids_list, labels_list), key=lambda p: p[0])
    blob = json.dumps(pairs, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


@dataclass
class SavedFolds:
    """The content of a folds file; ``folds[i]`` is the fold of ``ids[i]``."""

    ids: list[str]
    folds: np.ndarray
    labels: np.ndarray | None = None
    groups: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    data_hash: str = ""

    @property
    def n_folds(self) -> int:
        return int(self.folds.max()) + 1 if self.folds.size else 0


def _check_unique(ids: list[str], where: str) -> None:
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise ValueError(f"{where}: ids should be unique. Found duplicate id {dup!r}.")


def save_folds(
    path: str | Path,
    ids: Sequence[str],
    folds: np.ndarray | Sequence[int],
    meta: Mapping[str, Any] | None = None,
    *,
    labels: Sequence[int] | None = None,
    groups: Sequence[str] | None = None,
) -> str:
    """Write a folds file atomically; returns its ``data_hash`` (of ``ids`` and ``labels``).

    ``meta`` is free JSON (e.g. ``{"n_folds": 3, "seed": 0, "algorithm": "greedy-chi2"}``).
    """
    ids_list = [str(i) for i in ids]
    folds_arr = np.asarray(folds)
    if folds_arr.shape != (len(ids_list),) or (folds_arr.size and folds_arr.min() < 0):
        raise ValueError(
            f"Parameter `folds` should hold one non-negative fold index per id. Found shape "
            f"{folds_arr.shape} for {len(ids_list)} ids."
        )
    _check_unique(ids_list, f"save_folds({str(path)!r})")
    digest = data_hash(ids_list, labels)
    if groups is not None and len(groups) != len(ids_list):
        raise ValueError(
            f"Parameter `groups` should have one entry per id ({len(ids_list)}). Found {len(groups)}."
        )
    payload = {
        "format_version": FOLDS_FORMAT_VERSION,
        "data_hash": digest,
        "meta": dict(meta or {}),
        "ids": ids_list,
        "folds": [int(f) for f in folds_arr],
        "labels": None if labels is None else [int(v) for v in labels],
        "groups": None if groups is None else [str(g) for g in groups],
    }
    atomic.write_json(path, payload)
    return digest


def load_folds(
    path: str | Path, ids: Sequence[str] | None = None, labels: Sequence[int] | None = None
) -> SavedFolds:
    """Read a folds file; with ``ids`` (and ``labels``), verify them and return folds in ``ids`` order.

    Raises ``FileNotFoundError`` if absent, and ``ValueError`` naming the file if it is corrupt, or if the
    given ids (or labels) are not exactly those the file was made for (a changed data set).
    """
    p = Path(path)
    try:
        payload = json.loads(p.read_text(encoding="utf-8"))
        stored_ids = [str(i) for i in payload["ids"]]
        stored_folds = np.asarray(payload["folds"], dtype=np.int64)
        stored_labels = payload.get("labels")
        stored_hash = str(payload["data_hash"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"Folds file {str(p)!r} is not a valid folds file: {exc}") from exc
    if stored_folds.shape != (len(stored_ids),) or data_hash(stored_ids, stored_labels) != stored_hash:
        raise ValueError(
            f"Folds file {str(p)!r} is corrupt: its data_hash does not match its ids and labels."
        )
    saved = SavedFolds(
        ids=stored_ids,
        folds=stored_folds,
        labels=None if stored_labels is None else np.asarray(stored_labels, dtype=np.int64),
        groups=payload.get("groups"),
        meta=dict(payload.get("meta") or {}),
        data_hash=stored_hash,
    )
    if ids is None:
        return saved

    given = [str(i) for i in ids]
    _check_unique(given, f"load_folds({str(p)!r})")
    position = {name: j for j, name in enumerate(stored_ids)}
    missing = [name for name in given if name not in position]
    if missing or len(given) != len(stored_ids):
        extra = sorted(set(stored_ids) - set(given))
        first_missing = f" (first: {missing[0]!r})" if missing else ""
        first_extra = f" (first: {extra[0]!r})" if extra else ""
        raise ValueError(
            f"Folds file {str(p)!r} was made for a different data set: {len(missing)} of the {len(given)} "
            f"given ids are not in it{first_missing} and {len(extra)} of its {len(stored_ids)} ids were not "
            f"given{first_extra}. Delete the file to re-split, or use the folds of this data set."
        )
    index = np.asarray([position[name] for name in given], dtype=np.int64)
    if labels is not None:
        given_labels = np.asarray([int(v) for v in labels], dtype=np.int64)
        if saved.labels is None or not np.array_equal(saved.labels[index], given_labels):
            raise ValueError(
                f"Folds file {str(p)!r} was made for a different data set: the labels differ "
                f"(data_hash {stored_hash[:12]} in the file, {data_hash(given, given_labels)[:12]} now)."
            )
    return SavedFolds(
        ids=given,
        folds=stored_folds[index],
        labels=None if saved.labels is None else saved.labels[index],
        groups=None if saved.groups is None else [saved.groups[j] for j in index],
        meta=saved.meta,
        data_hash=stored_hash,
    )


def load_or_create_folds(
    path: str | Path,
    ids: Sequence[str],
    groups: Sequence[str],
    labels: Sequence[int],
    n_folds: int = 3,
    seed: int = 0,
) -> np.ndarray:
    """The folds of this data set from ``path``, computing and saving them on first use.

    An existing file must match the ids and labels (else ``ValueError`` from :func:`load_folds`) and the
    requested ``n_folds`` and ``seed`` (else ``ValueError`` naming the file and both values), so a rerun
    and every method train on identical folds.
    """
    k = _check_n_folds(n_folds)
    p = Path(path)
    if p.exists():
        saved = load_folds(p, ids, labels)
        stored = (saved.meta.get("n_folds"), saved.meta.get("seed"))
        if stored != (k, int(seed)):
            raise ValueError(
                f"Folds file {str(p)!r} holds n_folds={stored[0]}, seed={stored[1]}; this run asks for "
                f"n_folds={k}, seed={int(seed)}. Use a different folds path or delete the file."
            )
        if saved.groups is not None and list(saved.groups) != [str(g) for g in groups]:
            raise ValueError(f"Folds file {str(p)!r} was made with different groups (patient ids).")
        return saved.folds
    folds = grouped_folds(groups, labels, n_folds=k, seed=seed)
    meta = {"n_folds": k, "seed": int(seed), "algorithm": "greedy-chi2+refine"}
    save_folds(p, ids, folds, meta, labels=labels, groups=groups)
    return folds
