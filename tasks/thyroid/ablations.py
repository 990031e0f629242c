"""Leave-one-feature-out at inference (paper Table 5): the weight of one clinical feature set to zero.

The clinically guided classifier computes ``logits = W h + b`` with ``h = [h_tirads, h_deep]``. Disabling
feature ``k`` of ``h_tirads`` sets column ``k`` of ``W`` to zero and nothing else, so the embedding, the
segmentation and every other weight stay as they are; the only change of the logits is ``-W[:, k] h_k``.
Each row reports the metrics with the feature disabled and their change against the full model
(``disabled - full``: negative is a drop, as in Table 5).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from mtlbench.model import MultiTaskModel

from .radiomics import FEATURE_NAMES

#: Metrics copied into each row; the first three also get a ``delta_`` column (Table 5's columns).
ROW_METRICS = ("precision", "recall", "f1", "accuracy")
DELTA_METRICS = ("precision", "recall", "f1")


def _clinical_classifier(model: MultiTaskModel, head: str) -> tuple[nn.Linear, int]:
    try:
        classifier_head = model.heads[head]
    except KeyError:
        raise ValueError(f"the model has no head {head!r} (heads: {', '.join(model.heads.keys())})") from None
    classifier = getattr(classifier_head, "classifier", None)
    n_clinical = getattr(classifier_head, "n_clinical", None)
    if not isinstance(classifier, nn.Linear) or not isinstance(n_clinical, int):
        raise ValueError(
            f"head {head!r} is a {type(classifier_head).__name__}, not a clinically guided classifier "
            "(a `classifier` nn.Linear over the embedding and `n_clinical` clinical dimensions)"
        )
    return classifier, n_clinical


@contextlib.contextmanager
def zeroed_clinical_weight(model: MultiTaskModel, feature_index: int, head: str = "cls") -> Iterator[None]:
    """Within the block, column ``feature_index`` of the classifier weight ``W`` is zero.

    Only clinical features (``0 <= feature_index < n_clinical``, the ``h_tirads`` slice) can be
    disabled. The column is restored bit for bit on exit, also when the block raises; the parameter
    stays the same object, so optimisers and hooks holding it are unaffected.
    """
    classifier, n_clinical = _clinical_classifier(model, head)
    if isinstance(feature_index, bool) or not isinstance(feature_index, int):
        raise ValueError(
            f"Parameter `feature_index` should be an integer in [0, {n_clinical}). "
            f"Found `feature_index = {feature_index!r}`."
        )
    if not 0 <= feature_index < n_clinical:
        raise ValueError(
            f"Parameter `feature_index` should be in [0, {n_clinical}) (the clinically guided slice "
            f"h_tirads). Found `feature_index = {feature_index}`."
        )
    weight = classifier.weight
    with torch.no_grad():
        original = weight[:, feature_index].clone()
        weight[:, feature_index] = 0
    try:
        yield
    finally:
        with torch.no_grad():
            weight[:, feature_index] = original


def _metric(metrics: dict[str, Any], key: str) -> float:
    if key not in metrics:
        raise KeyError(f"the evaluation returned no {key!r} (keys: {', '.join(sorted(metrics))})")
    return float(metrics[key])


def leave_one_feature_out(
    evaluate: Callable[[], dict[str, Any]],
    model: MultiTaskModel,
    feature_names: Sequence[str] = FEATURE_NAMES,
    head: str = "cls",
) -> list[dict[str, Any]]:
    """One row per clinical feature: the metrics with its classifier weight zeroed, and the change.

    ``evaluate`` runs inference with ``model`` as it is at call time and returns a metrics dict with
    at least ``precision``, ``recall``, ``f1`` and ``accuracy`` (e.g.
    ``lambda: trainer.evaluate(splits.test)``). It is called once with all features (the reference)
    and once per feature. Rows follow ``feature_names`` (the order of ``h_tirads``) and hold
    ``feature``, the four metrics and ``delta_precision``, ``delta_recall``, ``delta_f1``
    (disabled − full; negative = a drop).
    """
    _, n_clinical = _clinical_classifier(model, head)
    if len(feature_names) != n_clinical:
        raise ValueError(
            f"Parameter `feature_names` should name the {n_clinical} clinical features of head "
            f"{head!r}. Found {len(feature_names)} names."
        )
    reference = evaluate()
    full = {key: _metric(reference, key) for key in ROW_METRICS}
    rows: list[dict[str, Any]] = []
    for index, name in enumerate(feature_names):
        with zeroed_clinical_weight(model, index, head=head):
            disabled = evaluate()
        row: dict[str, Any] = {"feature": name}
        row.update({key: _metric(disabled, key) for key in ROW_METRICS})
        row.update({f"delta_{key}": row[key] - full[key] for key in DELTA_METRICS})
        rows.append(row)
    return rows


def format_feature_ablation(rows: Sequence[dict[str, Any]]) -> str:
    """Table 5 as plain text: one line per disabled feature, deltas signed with four decimals."""

    def signed(value: float) -> str:
        return "nan" if math.isnan(value) else f"{value:+.4f}"

    width = max([len("disabled feature"), *(len(str(r["feature"])) for r in rows)])
    header = f"{'disabled feature':<{width}}  " + "  ".join(f"{'Δ' + k:>10}" for k in DELTA_METRICS)
    lines = [header, "-" * len(header)]
    for row in rows:
        deltas = "  ".join(f"{signed(row[f'delta_{k}']):>10}" for k in DELTA_METRICS)
        lines.append(f"{row['feature']:<{width}}  {deltas}")
    return "\n".join(lines)
