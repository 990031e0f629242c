"""ACR TI-RADS (Tessler et al., J Am Coll Radiol 2017): feature points, risk level and management.

The five feature categories and their points, as in the ACR chart (and ``spec/data.md``):

============== ===================================================================================
category       points
============== ===================================================================================
composition    cystic or almost completely cystic 0, spongiform 0, mixed cystic and solid 1,
               solid or almost completely solid 2
echogenicity   anechoic 0, hyperechoic or isoechoic 1, hypoechoic 2, very hypoechoic 3
shape          wider-than-tall 0, taller-than-wide 3
margin         smooth 0, ill-defined 0, lobulated or irregular 2, extrathyroidal extension 3
echogenic foci (choose all that apply, points add up) none or large comet-tail 0, macrocalcification 1,
               peripheral (rim) calcification 2, punctate echogenic foci 3
============== ===================================================================================

Levels from the point total: 0-1 -> TR1, 2 -> TR2, 3 -> TR3, 4-6 -> TR4, >= 7 -> TR5. A cystic or
spongiform nodule is TR1 whatever its other features (``spec/data.md``).

The 1-point case. The ACR chart lists "TR1: 0 points" and "TR2: 2 points" and is silent on a total of 1.
A non-cystic, non-spongiform nodule scores at least 1 (mixed) + 1 (hyper/iso) = 2 unless it is called
anechoic, and the lexicon restricts "anechoic" to cystic or almost completely cystic nodules; so a total
of 1 only arises from a lexicon-inconsistent reading (mixed + anechoic), or from a cystic/spongiform
nodule, which the override already sends to TR1. We read the chart's levels as lower thresholds
(TR2 from 2 points, TR3 from 3, TR4 from 4, TR5 from 7), hence 1 point -> TR1 ("benign"), the same
answer as the override gives for every 1-point nodule the lexicon allows. Sources: Tessler FN et al.,
"ACR Thyroid Imaging, Reporting and Data System (TI-RADS): White Paper of the ACR TI-RADS Committee",
JACR 14(5):587-595, 2017 (chart, Fig. 1), and the lexicon of Grant EG et al., JACR 12:1272-1279, 2015.
The phantom never samples a 1-point nodule outside the cystic/spongiform override.

Management by the largest diameter (ACR chart): TR3 biopsy >= 2.5 cm, follow-up >= 1.5 cm; TR4 biopsy
>= 1.5 cm, follow-up >= 1.0 cm; TR5 biopsy >= 1.0 cm, follow-up >= 0.5 cm; TR1 and TR2 need neither.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "LEVEL_NAMES",
    "MANAGEMENT_THRESHOLDS_CM",
    "AcrFeatures",
    "Composition",
    "EchogenicFoci",
    "Echogenicity",
    "Margin",
    "Shape",
    "feature_points",
    "level_from_points",
    "management",
    "tirads_level",
]


class _Category(str, Enum):
    """A feature category; members are strings (readable, JSON-friendly) carrying their ACR points.

    ``str, Enum`` rather than ``StrEnum`` keeps Python 3.10 support. Point values are not the enum values
    because distinct categories share points (cystic and spongiform both score 0).
    """

    def __str__(self) -> str:
        return self.value

    @property
    def points(self) -> int:
        """ACR points of this category."""
        return _POINTS[self]


class Composition(_Category):
    """Nodule composition. Cystic and spongiform both score 0 but look different, so they are distinct."""

    CYSTIC = "cystic"
    SPONGIFORM = "spongiform"
    MIXED = "mixed"
    SOLID = "solid"


class Echogenicity(_Category):
    """Echogenicity of the (solid part of the) nodule relative to the thyroid parenchyma."""

    ANECHOIC = "anechoic"
    HYPERECHOIC = "hyperechoic"
    ISOECHOIC = "isoechoic"
    HYPOECHOIC = "hypoechoic"
    VERY_HYPOECHOIC = "very_hypoechoic"  # darker than the strap muscles


class Shape(_Category):
    """Shape on the transverse plane: depth (antero-posterior) against width."""

    WIDER_THAN_TALL = "wider_than_tall"
    TALLER_THAN_WIDE = "taller_than_wide"


class Margin(_Category):
    """Nodule margin. Lobulated and irregular share 2 points; they are kept apart for rendering."""

    SMOOTH = "smooth"
    ILL_DEFINED = "ill_defined"
    LOBULATED = "lobulated"
    IRREGULAR = "irregular"
    EXTRATHYROIDAL_EXTENSION = "extrathyroidal_extension"


class EchogenicFoci(_Category):
    """Kinds of echogenic foci. A nodule carries any set of kinds; the points of the kinds add up."""

    NONE = "none"
    COMET_TAIL = "comet_tail"  # large comet-tail artefact
    MACROCALCIFICATION = "macrocalcification"
    PERIPHERAL_RIM = "peripheral_rim"
    PUNCTATE = "punctate"


_COMPOSITION_POINTS = {
    Composition.CYSTIC: 0,
    Composition.SPONGIFORM: 0,
    Composition.MIXED: 1,
    Composition.SOLID: 2,
}
_ECHOGENICITY_POINTS = {
    Echogenicity.ANECHOIC: 0,
    Echogenicity.HYPERECHOIC: 1,
    Echogenicity.ISOECHOIC: 1,
    Echogenicity.HYPOECHOIC: 2,
    Echogenicity.VERY_HYPOECHOIC: 3,
}
_SHAPE_POINTS = {Shape.WIDER_THAN_TALL: 0, Shape.TALLER_THAN_WIDE: 3}
_MARGIN_POINTS = {
    Margin.SMOOTH: 0,
    Margin.ILL_DEFINED: 0,
    Margin.LOBULATED: 2,
    Margin.IRREGULAR: 2,
    Margin.EXTRATHYROIDAL_EXTENSION: 3,
}
_FOCI_POINTS = {
    EchogenicFoci.NONE: 0,
    EchogenicFoci.COMET_TAIL: 0,
    EchogenicFoci.MACROCALCIFICATION: 1,
    EchogenicFoci.PERIPHERAL_RIM: 2,
    EchogenicFoci.PUNCTATE: 3,
}
_POINTS: dict[_Category, int] = {
    **_COMPOSITION_POINTS,
    **_ECHOGENICITY_POINTS,
    **_SHAPE_POINTS,
    **_MARGIN_POINTS,
    **_FOCI_POINTS,
}
_FOCI_ORDER = {kind: i for i, kind in enumerate(EchogenicFoci)}

LEVEL_NAMES: dict[int, str] = {
    1: "benign",
    2: "not suspicious",
    3: "mildly suspicious",
    4: "moderately suspicious",
    5: "highly suspicious",
}

# level -> (biopsy at or above, follow-up at or above), largest diameter in cm
MANAGEMENT_THRESHOLDS_CM: dict[int, tuple[float, float]] = {3: (2.5, 1.5), 4: (1.5, 1.0), 5: (1.0, 0.5)}


@dataclass(frozen=True)
class AcrFeatures:
    """The five ACR TI-RADS features of one nodule.

    ``foci`` is a set of kinds (given as any iterable); it is stored as a sorted tuple of distinct kinds
    with ``NONE`` dropped, so that equal feature sets compare equal. Several foci of one kind count once
    (ACR: points per kind, not per focus).
    """

    composition: Composition
    echogenicity: Echogenicity
    shape: Shape
    margin: Margin
    foci: tuple[EchogenicFoci, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "composition", Composition(self.composition))
        object.__setattr__(self, "echogenicity", Echogenicity(self.echogenicity))
        object.__setattr__(self, "shape", Shape(self.shape))
        object.__setattr__(self, "margin", Margin(self.margin))
        if isinstance(self.foci, (str, EchogenicFoci)):
            raise TypeError(
                "Parameter `foci` should be an iterable of EchogenicFoci kinds. "
                f"Found `foci = {self.foci!r}`."
            )
        kinds = {EchogenicFoci(kind) for kind in self.foci} - {EchogenicFoci.NONE}
        object.__setattr__(self, "foci", tuple(sorted(kinds, key=_FOCI_ORDER.__getitem__)))

    def point_vector(self) -> tuple[int, int, int, int, int]:
        """Points per category: (composition, echogenicity, shape, margin, echogenic foci)."""
        return (
            self.composition.points,
            self.echogenicity.points,
            self.shape.points,
            self.margin.points,
            sum(kind.points for kind in self.foci),
        )

    def points(self) -> int:
        """Total ACR points (before the cystic/spongiform override)."""
        return sum(self.point_vector())

    def level(self) -> int:
        """ACR TI-RADS level 1..5, see :func:`tirads_level`."""
        return tirads_level(self)


def feature_points(features: AcrFeatures | Iterable[AcrFeatures]) -> list[tuple[int, int, int, int, int]]:
    """Per-category points of one or several nodules, as a list of 5-tuples."""
    if isinstance(features, AcrFeatures):
        return [features.point_vector()]
    return [f.point_vector() for f in features]


def level_from_points(points: int) -> int:
    """ACR TI-RADS level from a point total: 0-1 -> 1, 2 -> 2, 3 -> 3, 4-6 -> 4, >= 7 -> 5.

    A total of 1 is not listed on the ACR chart; see the module docstring for why it maps to TR1.
    """
    if isinstance(points, bool) or int(points) != points:
        raise ValueError(f"Parameter `points` should be a non-negative integer. Found `points = {points!r}`.")
    points = int(points)
    if points < 0:
        raise ValueError(f"Parameter `points` should be a non-negative integer. Found `points = {points}`.")
    if points >= 7:
        return 5
    if points >= 4:
        return 4
    if points == 3:
        return 3
    if points == 2:
        return 2
    return 1


def tirads_level(features: AcrFeatures) -> int:
    """ACR TI-RADS level 1..5 of a nodule; cystic or spongiform nodules are TR1 whatever else."""
    if features.composition in (Composition.CYSTIC, Composition.SPONGIFORM):
        return 1
    return level_from_points(features.points())


def management(level: int, max_diameter_cm: float) -> str:
    """ACR recommendation for one nodule: ``"biopsy"``, ``"follow-up"`` or ``"none"``.

    Thresholds are inclusive ("FNA if >= 1.5 cm"). TR1 and TR2 need neither biopsy nor follow-up.
    """
    if isinstance(level, bool) or int(level) != level or not 1 <= int(level) <= 5:
        raise ValueError(f"Parameter `level` should be an integer in 1..5. Found `level = {level!r}`.")
    diameter = float(max_diameter_cm)
    if not math.isfinite(diameter) or diameter < 0:
        raise ValueError(
            "Parameter `max_diameter_cm` should be a finite non-negative number. "
            f"Found `max_diameter_cm = {max_diameter_cm!r}`."
        )
    thresholds = MANAGEMENT_THRESHOLDS_CM.get(int(level))
    if thresholds is None:
        return "none"
    biopsy_cm, follow_up_cm = thresholds
    if diameter >= biopsy_cm:
        return "biopsy"
    if diameter >= follow_up_cm:
        return "follow-up"
    return "none"
