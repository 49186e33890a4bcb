"""Statistics over seeds: runs that differ only by ``run.seed`` form a group, each figure its mean ± std over them,
and two settings are told apart only when Welch's t-test says their difference exceeds the seeds' spread.

``group_by_seed(runs)`` forms the groups; ``seed_scores(groups)`` computes every accuracy and geometry figure of
each group, which the report shows as a table (HTML, and Markdown for a README) and as curves with a band.
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nocollapse.config import BOOKKEEPING_KEYS, MONITOR_EVAL_KEYS, flatten
from nocollapse.report.plots import INSTALL_HINT
from nocollapse.report.runs import RunRecord

SEED_FREE_KEYS = BOOKKEEPING_KEYS | {"run.seed"}  # runs that differ only in these are one setting
SIGNIFICANCE = 0.05  # two-sided p below which Welch's t-test tells two settings apart


@dataclass
class RunGroup:
    """Runs of one setting, one per seed."""

    label: str
    runs: list[RunRecord]

    @property
    def evaluated(self) -> int:
        """How many of the runs have been evaluated: the n of the group's figures (a run still training has none)."""
        return sum(1 for run in self.runs if run.trained_row())

    @property
    def seeds(self) -> list[int]:
        return [_seed(run) for run in self.runs]


def setting(run: RunRecord, ignored: frozenset[str] | set[str] = SEED_FREE_KEYS) -> dict[str, Any]:
    """What a run computes, flattened, without the ``ignored`` keys: what it trained with (of the ``eval`` settings, those
    that shape its epoch monitor) and, as ``final eval.KEY``, what its final evaluation ran with (``run.final_eval``,
    which a re-evaluation may have changed)."""
    trained = {key: value for key, value in flatten(run.config).items()
               if key not in ignored and (not key.startswith("eval.") or key in MONITOR_EVAL_KEYS)}
    return trained | {f"final eval.{key}": value for key, value in run.final_eval.items()}


def setting_key(run: RunRecord) -> str:
    """What a run computes apart from its seed (:func:`setting`), as one string."""
    return json.dumps(setting(run), sort_keys=True, default=str)


def group_by_seed(runs: Sequence[RunRecord]) -> list[RunGroup]:
    """The runs grouped by setting, in the order each setting first appears. A group's label is its runs' label
    without ``-seed<N>`` where they all end so (``fmnist-byol-seed0``, ``-seed1`` → ``fmnist-byol``), else the first's."""
    groups: list[tuple[str, list[RunRecord]]] = []
    for run in runs:
        key, seed = setting_key(run), _seed(run)
        # A second run of the same setting and seed (a copy, a rerun) is not another seed: it stands on its own.
        same = next((members for k, members in groups if k == key and seed not in map(_seed, members)), None)
        if same is None:
            groups.append((key, [run]))
        else:
            same.append(run)
    result = []
    for _, members in groups:
        if len(members) == 1:
            result.append(RunGroup(members[0].label, members))
            continue
        stems = {run.label.removesuffix(f"-seed{_seed(run)}") for run in members}
        named = len(stems) == 1 and all(run.label.endswith(f"-seed{_seed(run)}") for run in members)
        result.append(RunGroup(stems.pop() if named else f"{members[0].label} (+{len(members) - 1} seeds)", members))
    return result


def _seed(run: RunRecord) -> int:
    return int(run.config.get("run", {}).get("seed", 0))


@dataclass(frozen=True)
class Measure:
    """One measure of a trained run: its column name, how to read it, whether higher is better (None: neither)."""

    name: str
    read: Callable[[RunRecord], float | None]
    higher_is_better: bool | None
    scale: float = 1.0  # 100 for accuracies shown in %
    digits: int = 2


def _trained_projections(run: RunRecord) -> dict[str, Any]:
    """The geometry of the trained method's projections (not the random baseline's)."""
    projections = [p for p in (run.evaluation or {}).get("projections", []) if not p["name"].startswith("random")]
    return projections[-1].get("geometry") or {} if projections else {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def measures_of(runs: Sequence[RunRecord]) -> list[Measure]:
    """The figures the runs' evaluations have: kNN per k, Euclidean kNN, the linear probe, then the geometry of the
    features and of the projections."""
    rows = [row for run in runs if (row := run.trained_row())]
    ks = sorted({int(k) for row in rows for k in row.get("knn", {})})
    euclid = sorted({int(k) for row in rows for k in row.get("knn_euclidean", {})})
    probes = sorted({p for row in rows for p in (row.get("linear") or {})})

    def row_value(section: str, key: str) -> Callable[[RunRecord], float | None]:
        return lambda run: _number(((run.trained_row() or {}).get(section) or {}).get(key))

    def geometry(key: str) -> Callable[[RunRecord], float | None]:
        return lambda run: _number(((run.trained_row() or {}).get("geometry") or {}).get(key))

    def projection(key: str) -> Callable[[RunRecord], float | None]:
        return lambda run: _number(_trained_projections(run).get(key))

    figures = [Measure(f"kNN k={k}", row_value("knn", str(k)), True, 100) for k in ks]
    figures += [Measure(f"kNN-euclid k={k}", row_value("knn_euclidean", str(k)), True, 100) for k in euclid]
    figures += [Measure(f"linear {p}", row_value("linear", p), True, 100) for p in probes]
    figures += [Measure("feat. alignment", geometry("alignment"), False, digits=3), Measure("feat. uniformity", geometry("uniformity"), False, digits=3),
                Measure("feat. RankMe", geometry("rankme"), True, digits=1), Measure("feat. separability", geometry("separability"), True, digits=3),
                Measure("proj. uniformity", projection("uniformity"), False, digits=3), Measure("proj. RankMe", projection("rankme"), True, digits=1)]
    return [figure for figure in figures if any(figure.read(run) is not None for run in runs)]


@dataclass
class Cell:
    """One group's figure over its seeds, and how it compares with the column's best group."""

    values: list[float]
    best: bool = False  # the column's best mean
    tied: bool = False  # not told apart from the best by the test (p >= SIGNIFICANCE)
    p_value: float | None = None  # Welch's two-sided p against the best group; None for the best or when untested

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None


@dataclass
class SeedScores:
    """Every measure of every group: ``cells[group][measure]`` (None where the group's runs lack it)."""

    groups: list[RunGroup]
    measures: list[Measure]
    cells: list[list[Cell | None]] = field(default_factory=list)
    untested: str = ""  # why no setting was tested against the best (an extra missing), else empty


def welch_p_value(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p of Welch's t-test (unequal variances) that ``a`` and ``b`` have the same mean; None with fewer than
    2 values on a side. Identical constant samples give 1, different constant samples 0."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a), statistics.variance(b)
    difference = statistics.fmean(a) - statistics.fmean(b)
    if va == 0 and vb == 0:
        return 1.0 if difference == 0 else 0.0
    from scipy import stats  # in the report extra (scikit-learn's dependency too)

    with warnings.catch_warnings():  # near-identical samples: scipy warns of precision loss, and the p it gives is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        p_value = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return p_value if math.isfinite(p_value) else None


def seed_scores(groups: Sequence[RunGroup]) -> SeedScores:
    """Each figure of each group over its seeds; in each column the best mean (of the groups on one dataset) is marked,
    and every other group is tested against it."""
    figures = measures_of([run for group in groups for run in group.runs])
    scores = SeedScores(list(groups), figures)
    for group in groups:
        row = []
        for figure in figures:
            values = [value for run in group.runs if (value := figure.read(run)) is not None]
            row.append(Cell(values) if values else None)
        scores.cells.append(row)
    for dataset in {group.runs[0].dataset for group in groups}:
        members = [i for i, group in enumerate(groups) if group.runs[0].dataset == dataset]
        for column, figure in enumerate(figures):
            if figure.higher_is_better is None:
                continue
            present = [i for i in members if scores.cells[i][column] is not None]
            if len(present) < 2:  # nothing to compare with
                continue
            sign = 1 if figure.higher_is_better else -1
            # The best among the settings with a spread to test against; one seed's mean cannot anchor the test.
            tested = [i for i in present if len(scores.cells[i][column].values) > 1] or present
            best = max(tested, key=lambda i: sign * scores.cells[i][column].mean)
            top = scores.cells[best][column]
            top.best = True
            for i in present:
                cell = scores.cells[i][column]
                if i == best or scores.untested:
                    continue
                try:
                    cell.p_value = welch_p_value(cell.values, top.values)
                except ModuleNotFoundError:
                    scores.untested = f"scipy is not installed, so no setting is tested against the best: {INSTALL_HINT} adds it"
                cell.tied = cell.p_value is not None and cell.p_value >= SIGNIFICANCE
    return scores


def mean_std_text(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std`` (sample std) of ``scale·values``; the mean alone for one value, ``–`` for none."""
    if not values:
        return "–"
    text = f"{scale * statistics.fmean(values):.{digits}f}"
    return text + (f" ± {scale * statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def format_cell(cell: Cell | None, figure: Measure) -> str:
    """``mean ± std`` in the figure's units (the mean alone for one seed), ``–`` when missing."""
    return mean_std_text(cell.values if cell else [], figure.scale, figure.digits)


TEST_NOTE = (f"Bold: the best mean of the column among the settings with two or more seeds, and every setting that Welch's two-sided "
             f"t-test over the seeds does not tell apart from it (p ≥ {SIGNIFICANCE}); a setting with a single seed is not tested. "
             "Mean ± sample std over the seeds, n of them.")


def markdown_table(scores: SeedScores) -> str:
    """The seed table as Markdown (for a README), bold as on the page."""
    header = ["setting", "n", *(measure.name for measure in scores.measures)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group, cells in zip(scores.groups, scores.cells):
        shown = [(f"**{format_cell(cell, figure)}**" if cell and (cell.best or cell.tied) else format_cell(cell, figure))
                 for cell, figure in zip(cells, scores.measures)]
        lines.append("| " + " | ".join([group.label, str(group.evaluated), *shown]) + " |")
    return "\n".join(lines) + "\n\n" + (scores.untested or TEST_NOTE) + "\n"
