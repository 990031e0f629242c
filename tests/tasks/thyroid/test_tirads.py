"""ACR TI-RADS points, levels and management (Tessler et al. 2017, as pinned in spec/data.md)."""

from __future__ import annotations

import itertools
import math

import pytest

from mtlbench.tasks.thyroid.tirads import (
    AcrFeatures,
    Composition,
    EchogenicFoci,
    Echogenicity,
    Margin,
    Shape,
    feature_points,
    level_from_points,
    management,
    tirads_level,
)

C, E, S, M, F = Composition, Echogenicity, Shape, Margin, EchogenicFoci


def nodule(
    composition: Composition = C.SOLID,
    echogenicity: Echogenicity = E.ISOECHOIC,
    shape: Shape = S.WIDER_THAN_TALL,
    margin: Margin = M.SMOOTH,
    foci: tuple[EchogenicFoci, ...] = (),
) -> AcrFeatures:
    return AcrFeatures(composition, echogenicity, shape, margin, foci)


@pytest.mark.parametrize(
    ("member", "points"),
    [
        (C.CYSTIC, 0),
        (C.SPONGIFORM, 0),
        (C.MIXED, 1),
        (C.SOLID, 2),
        (E.ANECHOIC, 0),
        (E.HYPERECHOIC, 1),
        (E.ISOECHOIC, 1),
        (E.HYPOECHOIC, 2),
        (E.VERY_HYPOECHOIC, 3),
        (S.WIDER_THAN_TALL, 0),
        (S.TALLER_THAN_WIDE, 3),
        (M.SMOOTH, 0),
        (M.ILL_DEFINED, 0),
        (M.LOBULATED, 2),
        (M.IRREGULAR, 2),
        (M.EXTRATHYROIDAL_EXTENSION, 3),
        (F.NONE, 0),
        (F.COMET_TAIL, 0),
        (F.MACROCALCIFICATION, 1),
        (F.PERIPHERAL_RIM, 2),
        (F.PUNCTATE, 3),
    ],
)
def test_acr_point_table(member, points: int) -> None:
    assert member.points == points


def test_every_category_member_has_points() -> None:
    for enum in (Composition, Echogenicity, Shape, Margin, EchogenicFoci):
        for member in enum:
            assert isinstance(member.points, int)


@pytest.mark.parametrize(
    ("features", "vector", "level"),
    [
        (nodule(C.MIXED, E.ISOECHOIC), (1, 1, 0, 0, 0), 2),
        (nodule(C.MIXED, E.HYPERECHOIC, margin=M.ILL_DEFINED, foci=(F.COMET_TAIL,)), (1, 1, 0, 0, 0), 2),
        (nodule(C.SOLID, E.ISOECHOIC), (2, 1, 0, 0, 0), 3),
        (nodule(C.MIXED, E.HYPOECHOIC), (1, 2, 0, 0, 0), 3),
        (nodule(C.MIXED, E.ISOECHOIC, foci=(F.MACROCALCIFICATION,)), (1, 1, 0, 0, 1), 3),
        (nodule(C.SOLID, E.HYPOECHOIC), (2, 2, 0, 0, 0), 4),
        (nodule(C.SOLID, E.ISOECHOIC, margin=M.LOBULATED, foci=(F.MACROCALCIFICATION,)), (2, 1, 0, 2, 1), 4),
        (nodule(C.SOLID, E.HYPOECHOIC, margin=M.IRREGULAR), (2, 2, 0, 2, 0), 4),
        (nodule(C.SOLID, E.VERY_HYPOECHOIC, margin=M.LOBULATED), (2, 3, 0, 2, 0), 5),
        (nodule(C.SOLID, E.HYPOECHOIC, S.TALLER_THAN_WIDE), (2, 2, 3, 0, 0), 5),
        (nodule(C.SOLID, E.ISOECHOIC, foci=(F.PUNCTATE,)), (2, 1, 0, 0, 3), 4),
        (nodule(C.SOLID, E.HYPOECHOIC, foci=(F.PUNCTATE,)), (2, 2, 0, 0, 3), 5),
        (nodule(C.MIXED, E.ISOECHOIC, margin=M.EXTRATHYROIDAL_EXTENSION), (1, 1, 0, 3, 0), 4),
        (
            nodule(C.SOLID, E.VERY_HYPOECHOIC, S.TALLER_THAN_WIDE, M.EXTRATHYROIDAL_EXTENSION, (F.PUNCTATE,)),
            (2, 3, 3, 3, 3),
            5,
        ),
    ],
)
def test_points_and_level_of_hand_written_nodules(features: AcrFeatures, vector, level: int) -> None:
    assert features.point_vector() == vector
    assert features.points() == sum(vector)
    assert tirads_level(features) == level
    assert features.level() == level


def test_echogenic_foci_are_additive_per_kind() -> None:
    base = nodule(C.SOLID, E.ISOECHOIC)  # 3 points
    assert nodule(foci=(F.MACROCALCIFICATION, F.PERIPHERAL_RIM)).points() == base.points() + 1 + 2
    all_kinds = nodule(foci=(F.MACROCALCIFICATION, F.PERIPHERAL_RIM, F.PUNCTATE, F.COMET_TAIL))
    assert all_kinds.point_vector()[4] == 6
    assert all_kinds.points() == 9 and tirads_level(all_kinds) == 5
    # macro + rim: 3 + 3 = 6 -> TR4; adding punctate crosses into TR5.
    assert tirads_level(nodule(foci=(F.MACROCALCIFICATION, F.PERIPHERAL_RIM))) == 4


def test_foci_are_a_set() -> None:
    assert nodule(foci=(F.PUNCTATE, F.PUNCTATE)).point_vector()[4] == 3  # several dots of one kind count once
    assert nodule(foci=(F.PERIPHERAL_RIM, F.MACROCALCIFICATION)) == nodule(
        foci=(F.MACROCALCIFICATION, F.PERIPHERAL_RIM)
    )
    assert nodule(foci=(F.NONE,)) == nodule(foci=())
    assert nodule(foci=(F.NONE, F.PUNCTATE)).foci == (F.PUNCTATE,)
    assert nodule(foci=[F.PUNCTATE]).foci == (F.PUNCTATE,)  # any iterable, stored as a tuple


def test_features_accept_plain_strings() -> None:
    from_strings = AcrFeatures("solid", "very_hypoechoic", "taller_than_wide", "irregular", ("punctate",))
    assert from_strings == nodule(C.SOLID, E.VERY_HYPOECHOIC, S.TALLER_THAN_WIDE, M.IRREGULAR, (F.PUNCTATE,))
    assert str(C.SOLID) == "solid"
    assert hash(from_strings) == hash(
        nodule(C.SOLID, E.VERY_HYPOECHOIC, S.TALLER_THAN_WIDE, M.IRREGULAR, (F.PUNCTATE,))
    )


def test_invalid_features_are_rejected() -> None:
    with pytest.raises(ValueError):
        AcrFeatures("solidish", "hypoechoic", "wider_than_tall", "smooth")
    with pytest.raises(TypeError, match="foci"):
        AcrFeatures("solid", "hypoechoic", "wider_than_tall", "smooth", "punctate")


@pytest.mark.parametrize("composition", [C.CYSTIC, C.SPONGIFORM])
def test_cystic_or_spongiform_is_tr1_whatever_else(composition: Composition) -> None:
    worst = nodule(
        composition,
        E.VERY_HYPOECHOIC,
        S.TALLER_THAN_WIDE,
        M.EXTRATHYROIDAL_EXTENSION,
        (F.PUNCTATE, F.PERIPHERAL_RIM, F.MACROCALCIFICATION),
    )
    assert worst.points() == 0 + 3 + 3 + 3 + 6
    assert tirads_level(worst) == 1
    assert tirads_level(nodule(composition, E.ANECHOIC)) == 1


@pytest.mark.parametrize(
    ("points", "level"),
    [(0, 1), (1, 1), (2, 2), (3, 3), (4, 4), (5, 4), (6, 4), (7, 5), (8, 5), (14, 5), (20, 5)],
)
def test_level_thresholds(points: int, level: int) -> None:
    assert level_from_points(points) == level


@pytest.mark.parametrize("bad", [-1, 2.5, True, "3"])
def test_level_from_points_rejects_non_counts(bad) -> None:
    with pytest.raises((ValueError, TypeError)):
        level_from_points(bad)


def test_level_is_points_threshold_for_every_non_cystic_combination() -> None:
    kinds = [F.COMET_TAIL, F.MACROCALCIFICATION, F.PERIPHERAL_RIM, F.PUNCTATE]
    seen = set()
    for composition, echo, shape, margin, *flags in itertools.product(
        Composition, Echogenicity, Shape, Margin, *([(False, True)] * len(kinds))
    ):
        foci = tuple(k for k, on in zip(kinds, flags, strict=True) if on)
        features = AcrFeatures(composition, echo, shape, margin, foci)
        level = tirads_level(features)
        if composition in (C.CYSTIC, C.SPONGIFORM):
            assert level == 1
        else:
            assert level == level_from_points(features.points())
        seen.add(level)
    assert seen == {1, 2, 3, 4, 5}


def test_feature_points_helper() -> None:
    a = nodule(C.SOLID, E.HYPOECHOIC)
    b = nodule(C.MIXED, E.ISOECHOIC, foci=(F.PUNCTATE,))
    assert feature_points(a) == [(2, 2, 0, 0, 0)]
    assert feature_points([a, b]) == [(2, 2, 0, 0, 0), (1, 1, 0, 0, 3)]


@pytest.mark.parametrize(
    ("level", "diameter_cm", "action"),
    [
        (1, 0.3, "none"),
        (1, 6.0, "none"),
        (2, 6.0, "none"),
        (3, 2.5, "biopsy"),
        (3, 2.49, "follow-up"),
        (3, 1.5, "follow-up"),
        (3, 1.49, "none"),
        (4, 1.5, "biopsy"),
        (4, 1.49, "follow-up"),
        (4, 1.0, "follow-up"),
        (4, 0.99, "none"),
        (5, 1.0, "biopsy"),
        (5, 0.99, "follow-up"),
        (5, 0.5, "follow-up"),
        (5, 0.49, "none"),
        (5, 0.0, "none"),
    ],
)
def test_management_thresholds(level: int, diameter_cm: float, action: str) -> None:
    assert management(level, diameter_cm) == action


@pytest.mark.parametrize(("level", "diameter_cm"), [(0, 1.0), (6, 1.0), (2.5, 1.0), (3, -0.1), (3, math.nan)])
def test_management_rejects_bad_input(level, diameter_cm) -> None:
    with pytest.raises(ValueError):
        management(level, diameter_cm)
