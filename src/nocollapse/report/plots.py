"""The report's figures, one function per plot, each drawn from :class:`RunRecord`s alone.

Every function returns a matplotlib ``Figure`` (or None when no run has the data it plots). Figures
are built without pyplot, so drawing needs no display and leaves no global state behind. matplotlib
and scikit-learn (for the t-SNE map) are optional extras: :func:`missing_extra` says which is absent
and how to install it, and the page goes on without those plots.
"""

from __future__ import annotations

import importlib
import io
import math
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from nocollapse.report.runs import RunRecord, few_label_entries, knn_key
from nocollapse.train.collapse import STD_WARNING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INSTALL_HINT = "pip install 'nocollapse[report]'"
PANEL_SIZE = (4.2, 3.0)  # inches per subplot; at 110 dpi a three-panel row fits a laptop screen
DPI = 110


def missing_extra(module: str) -> str | None:
    """None if ``module`` imports, else a message naming the extra that provides it."""
    try:
        importlib.import_module(module)
        return None
    except ImportError:
        pass
    purpose = {"matplotlib": "plots", "sklearn": "t-SNE map of the test embeddings"}[module]
    package = {"sklearn": "scikit-learn"}.get(module, module)
    return f"{package} is not installed, so the report has no {purpose}: {INSTALL_HINT} adds it"


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _figure(rows: int, cols: int) -> tuple[Figure, list[Any]]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, [ax for row in axes for ax in row]


def run_colors(runs: Sequence[RunRecord]) -> dict[str, str]:
    """One colour per run, the same in every figure."""
    return {run.label: f"C{i % 10}" for i, run in enumerate(runs)}


def _legend(figure: Figure, axes: list[Any], runs: Sequence[RunRecord]) -> None:
    """A figure legend under the panels, when there is more than one line or run to tell apart."""
    handles, labels = {}, []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    if labels and (len(labels) > 1 or len(runs) > 1):  # with several runs, even one line needs its name
        figure.legend([handles[label] for label in labels], labels, loc="outside lower center", ncols=min(4, len(labels)), frameon=False)


def _grid(count: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(max_cols, count)
    return math.ceil(count / cols), cols


def loss_figure(runs: Sequence[RunRecord]) -> Figure | None:
    """One panel per loss term (the total first), each run a line against epochs. A term that is the whole
    loss in every run (BYOL alone) shares the total's panel instead of repeating it."""
    terms: list[str] = []
    for run in runs:
        terms += [t for t in run.loss_terms() if t not in terms]
    if not terms:
        return None
    titles = {term: term for term in terms}
    titles["loss"] = "total loss"
    for term in terms[1:]:
        if all(w.get(term) == w.get("loss") for run in runs for w in run.windows):
            terms.remove(term)
            titles["loss"] = f"total loss (= {term})"
    colors = run_colors(runs)
    figure, axes = _figure(*_grid(len(terms)))
    for ax, term in zip(axes, terms):
        for run in runs:
            points = [(w["epoch"], w[term]) for w in run.windows if term in w]
            if points:
                x, y = zip(*points)
                ax.plot(x, y, color=colors[run.label], label=run.label, linewidth=1.2)
        ax.set_title(titles[term])
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in axes[len(terms):]:
        ax.set_visible(False)
    _legend(figure, axes, runs)
    return figure


def knn_figure(runs: Sequence[RunRecord]) -> Figure | None:
    """The per-epoch kNN top-1 of each run (a star: its final evaluation, with the whole training set, or
    eval.train_samples of it, as the bank), its online probe's top-1 on the training views of each window (thin, dashed), and each
    dataset's raw-pixel kNN from the final evaluation, dotted."""
    series, online = [], []
    for run in runs:
        points = [(m["epoch"], 100 * m[key], key.removeprefix("knn_top1_k")) for m in run.monitors if (key := knn_key(m))]
        if points:
            series.append((run, points))
        if windows := [(w["epoch"], 100 * w["online_top1"]) for w in run.windows if "online_top1" in w]:
            online.append((run, windows))
    if not series and not online:
        return None
    colors = run_colors(runs)
    figure, (ax,) = _figure(1, 1)
    figure.set_size_inches(PANEL_SIZE[0] * 1.6, PANEL_SIZE[1] * 1.3)
    for run, windows in online:
        x, y = zip(*windows)
        ax.plot(x, y, color=colors[run.label], linestyle="--", linewidth=0.8, alpha=0.8, label=f"{run.label}, online probe (training views)")
    baselines: dict[tuple[str, str], float] = {}
    for run, points in series:
        x, y, ks = zip(*points)
        ax.plot(x, y, marker="o", markersize=3, color=colors[run.label], label=f"{run.label} (k={ks[-1]})")
        final = (run.trained_row() or {}).get("knn", {}).get(ks[-1])
        if final is not None:  # the final evaluation votes from the whole training set (or eval.train_samples), the monitor from a subset
            ax.plot([x[-1]], [100 * final], marker="*", markersize=11, color=colors[run.label], linestyle="none",
                    label=f"{run.label}, final evaluation")
        for row in run.baseline_rows():
            if row["name"] == "raw pixels" and ks[-1] in row.get("knn", {}):
                baselines[(run.dataset, ks[-1])] = 100 * row["knn"][ks[-1]]
    for (dataset, k), accuracy in baselines.items():
        ax.axhline(accuracy, color="0.4", linestyle=":", linewidth=1)
        ax.annotate(f"raw pixels, {dataset} (k={k})", (0, accuracy), xycoords=("axes fraction", "data"), xytext=(3, 3),
                    textcoords="offset points", fontsize=8, color="0.3")
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure


def _band(series: Sequence[Sequence[tuple[float, float]]]) -> tuple[list[float], list[float], list[float]] | None:
    """(x, mean, std) over the seeds' curves at the x values they all have; None when they share none."""
    shared = set.intersection(*(set(x for x, _ in curve) for curve in series)) if series else set()
    if not shared:
        return None
    xs = sorted(shared)
    at = [dict(curve) for curve in series]
    means = [statistics.fmean(curve[x] for curve in at) for x in xs]
    stds = [statistics.stdev(curve[x] for curve in at) if len(at) > 1 else 0.0 for x in xs]
    return xs, means, stds


def seed_band_figure(runs: Sequence[RunRecord]) -> Figure | None:
    """For each setting run with several seeds (:func:`~nocollapse.report.seeds.group_by_seed`): its monitor's kNN
    top-1 and its total loss against epochs, the mean over the seeds as a line and ±1 std as a band. None when no
    setting has two seeds."""
    from nocollapse.report.seeds import group_by_seed

    groups = [group for group in group_by_seed(runs) if len(group.runs) > 1]
    if not groups:
        return None
    panels = [("kNN top-1 (%) on the test split", lambda run: [(m["epoch"], 100 * m[key]) for m in run.monitors if (key := knn_key(m))]),
              ("total loss", lambda run: [(w["epoch"], w["loss"]) for w in run.windows if "loss" in w])]
    figure, axes = _figure(1, len(panels))
    drawn = False
    for ax, (title, read) in zip(axes, panels):
        for index, group in enumerate(groups):
            band = _band([read(run) for run in group.runs])
            if band is None:
                continue
            x, mean, std = band
            color = f"C{index % 10}"
            ax.plot(x, mean, color=color, linewidth=1.4, marker="o" if len(x) < 30 else None, markersize=3,
                    label=f"{group.label} (n={len(group.runs)})")
            ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color=color, alpha=0.2, linewidth=0)
            drawn = True
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if not drawn:
        return None
    _legend(figure, axes, runs)
    return figure


def schedule_figure(runs: Sequence[RunRecord]) -> Figure | None:
    """Learning rate and EMA momentum τ (methods with a target network) against epochs."""
    if not any(run.windows for run in runs):
        return None
    has_tau = any("tau" in w for run in runs for w in run.windows)
    colors = run_colors(runs)
    figure, axes = _figure(1, 2 if has_tau else 1)
    for ax, key, title in zip(axes, ("lr", "tau"), ("learning rate", "EMA momentum τ")):
        for run in runs:
            points = [(w["epoch"], w[key]) for w in run.windows if key in w]
            if points:
                x, y = zip(*points)
                ax.plot(x, y, color=colors[run.label], label=run.label, linewidth=1.2)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    peaks = [max(w["lr"] for w in run.windows if "lr" in w) for run in runs if any("lr" in w for w in run.windows)]
    if peaks and min(peaks) > 0 and max(peaks) / min(peaks) > 10:  # Adam's 1e-3 beside LARS's 0.5: only a log axis shows both
        axes[0].set_yscale("log")
        axes[0].set_title("learning rate (log scale)")
    _legend(figure, axes, runs)
    return figure


GEOMETRY_PANELS = (("alignment", "alignment (lower: positives closer)"), ("uniformity", "uniformity (lower: more spread)"),
                   ("rankme", "RankMe (effective rank)"), ("std", "std·√d of ẑ (0: collapsed)"))


def _geometry_value(scores: dict[str, Any], key: str) -> float | None:
    """A monitor geometry value as plotted: the std scaled by √dim, so that spread embeddings read about 1 at any dim."""
    value = scores.get(key)
    if value is None or key != "std":
        return value
    return value * math.sqrt(scores["dim"]) if "dim" in scores else None


def geometry_figure(runs: Sequence[RunRecord]) -> Figure | None:
    """Alignment, uniformity, RankMe and normalised std of the test features (top) and projections (bottom) per
    epoch; the std panel of the projections also draws the training batches' (dashed) and the warning level."""
    spaces = [space for space in ("features", "projections") if any(space in m.get("geometry", {}) for run in runs for m in run.monitors)]
    if not spaces:
        return None
    colors = run_colors(runs)
    figure, axes = _figure(len(spaces), len(GEOMETRY_PANELS))
    for row, space in enumerate(spaces):
        for col, (key, title) in enumerate(GEOMETRY_PANELS):
            ax = axes[row * len(GEOMETRY_PANELS) + col]
            for run in runs:
                points = [(m["epoch"], _geometry_value(m["geometry"][space], key)) for m in run.monitors
                          if _geometry_value(m.get("geometry", {}).get(space, {}), key) is not None]
                if points:
                    x, y = zip(*points)
                    ax.plot(x, y, marker="o", markersize=3, color=colors[run.label], label=run.label)
                dim = run.config.get("model", {}).get("projection_dim")
                batches = [(w["epoch"], w["embedding_std"] * math.sqrt(dim)) for w in run.windows if "embedding_std" in w] if dim else []
                if key == "std" and space == "projections" and batches:
                    x, y = zip(*batches)
                    ax.plot(x, y, linestyle="--", linewidth=0.8, color=colors[run.label])
            if key == "std":
                ax.axhline(STD_WARNING, color="grey", linestyle=":", linewidth=1)
            ax.set_title(f"{space}: {title}", fontsize=9)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    _legend(figure, axes, runs)
    return figure


def _spectrum_line(ax: Any, spectrum: Sequence[float], **style: Any) -> None:
    sigma = torch.tensor(spectrum, dtype=torch.float64)
    if sigma.numel() == 0 or sigma[0] <= 0:
        return
    normalised = (sigma / sigma[0]).clamp_min(1e-12)  # a zero singular value would vanish from a log axis
    ax.plot(range(1, len(spectrum) + 1), normalised.tolist(), **style)


def spectrum_figure(runs: Sequence[RunRecord]) -> Figure | None:
    """Singular values σ_k/σ_1 (log scale) of the test features and projections from each run's final
    evaluation: trained solid, the run's baselines (raw pixels, random network) dashed and grey."""
    evaluated = [run for run in runs if run.evaluation]
    if not evaluated:
        return None
    colors = run_colors(runs)
    figure, axes = _figure(1, 2)
    drawn: set[tuple[str, str, int]] = set()  # a baseline shared by runs is drawn once
    greys = iter(["0.25", "0.55", "0.4", "0.7"] * 100)
    for run in evaluated:
        evaluation = run.evaluation or {}
        rows = evaluation.get("rows", [])
        for index, row in enumerate(rows):
            spectrum = (row.get("geometry") or {}).get("spectrum")
            if not spectrum:
                continue
            if index == len(rows) - 1:
                _spectrum_line(axes[0], spectrum, color=colors[run.label], label=run.label, linewidth=1.5)
            elif (key := (run.dataset, row["name"], row["dim"])) not in drawn:
                drawn.add(key)
                _spectrum_line(axes[0], spectrum, color=next(greys), linestyle="--", linewidth=1, label=row["name"])
        for projection in evaluation.get("projections", []):
            spectrum = projection.get("geometry", {}).get("spectrum")
            if not spectrum:
                continue
            if projection["name"].startswith("random"):
                _spectrum_line(axes[1], spectrum, color=colors[run.label], linestyle="--", linewidth=1, alpha=0.6,
                               label=f"{run.label}, at initialisation")
            else:
                _spectrum_line(axes[1], spectrum, color=colors[run.label], linewidth=1.5, label=run.label)
    for ax, title in zip(axes, ("encoder features", "projections")):
        ax.set_yscale("log")
        ax.set_title(f"singular spectrum of test {title}")
        ax.set_xlabel("index k")
        ax.set_ylabel("σ_k / σ_1")
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return figure


def label_efficiency_figure(runs: Sequence[RunRecord]) -> Figure | None:
    """Accuracy against the number of labelled training images (log scale): a panel for the first kNN k and one for
    the linear probe (each run's trained encoder solid, the baselines dashed and grey; the last point of a line is the
    full training set, from the main evaluation), and where runs fine-tuned, a panel of the fine-tuned encoder (solid)
    against the same network from scratch (dotted). Bars: ±1 std over the label draws."""
    evaluated = [run for run in runs if any(row.get("few_labels") for row in (run.evaluation or {}).get("rows", []))]
    finetuned = [run for run in runs if (run.evaluation or {}).get("finetune")]
    if not evaluated and not finetuned:
        return None
    colors = run_colors(runs)
    first_k = next((k for run in evaluated for row in run.evaluation["rows"] for scores in row.get("few_labels", []) for k in scores["knn"]), None)
    panels = [(f"kNN k={first_k}", ("knn", first_k)), ("linear", ("linear", "top1"))] if evaluated else []
    figure, axes = _figure(1, len(panels) + bool(finetuned))
    greys = iter(["0.25", "0.55", "0.4", "0.7"] * 100)
    entries = few_label_entries(evaluated)
    names = [row["name"] for row, _, _, baseline in entries if baseline]
    totals = {run.label: run.evaluation.get("labelled_train_images", 0) for run in evaluated}
    for row, labels, _, baseline in entries:  # a baseline shared by runs (the same draws) once
        if baseline:  # named after its runs where runs of other seeds drew other subsets
            name = row["name"] if names.count(row["name"]) == 1 else f"{row['name']} ({', '.join(labels)})"
            style = {"color": next(greys), "linestyle": "--", "linewidth": 1, "label": name}
        else:
            style = {"color": colors[labels[0]], "linewidth": 1.5, "label": labels[0]}
        total = totals[labels[0]]
        for ax, (column, (score, key)) in zip(axes, panels):
            points = sorted((s["labels"], s["summary"][column]["mean"], s["summary"][column]["std"])
                            for s in row["few_labels"] if column in s["summary"])
            full = (row.get(score) or {}).get(key)
            if total and full is not None:
                points.append((total, full, 0.0))
            if points:
                _error_line(ax, points, **style)
    titles = [f"{column} against labels" for column, _ in panels]
    if finetuned:
        ax = axes[len(panels)]
        for run in finetuned:
            for key, linestyle, name in (("pretrained", "-", run.label + ", fine-tuned"), ("scratch", ":", run.label + ", from scratch")):
                points = sorted((entry["labels"], statistics.fmean(entry[key]), statistics.stdev(entry[key]) if len(entry[key]) > 1 else 0.0)
                                for entry in run.evaluation["finetune"])
                _error_line(ax, points, color=colors[run.label], linestyle=linestyle, linewidth=1.5, label=name)
        titles.append("fine-tuned end to end")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log")
        ax.set_title(title)
        ax.set_xlabel("labelled training images (log)")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3, which="both")
    _legend(figure, axes, runs)
    return figure


def _error_line(ax: Any, points: Sequence[tuple[float, float, float]], **style: Any) -> None:
    """(x, mean, std) points, accuracies as fractions, drawn in percent with ±std bars."""
    x, mean, std = zip(*points)
    ax.errorbar(x, [100 * m for m in mean], yerr=[100 * d for d in std], marker="o", markersize=3, capsize=2, **style)


def unmappable(features: torch.Tensor) -> str | None:
    """Why the features cannot be mapped (non-finite values, too few rows, every row the same
    direction: a collapsed encoder), or None. scikit-learn's t-SNE fails, or even crashes the
    process, on such input."""
    if features.shape[0] < 4:
        return f"only {features.shape[0]} test embeddings were saved; t-SNE needs at least 4"
    if not torch.isfinite(features).all():
        return "the test embeddings hold NaN or infinite values"
    unit = torch.nn.functional.normalize(features.double(), dim=1)
    if unit.std(dim=0).max() < 1e-6:
        return "every test embedding points the same way (collapsed), so there is nothing to map"
    return None


def tsne_map(features: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """2-D t-SNE (scikit-learn, PCA initialisation, perplexity 30) of the ℓ2-normalised (N, D) features:
    after normalisation, Euclidean neighbours are the cosine neighbours the kNN evaluation uses.
    Check :func:`unmappable` first."""
    from sklearn.manifold import TSNE

    unit = torch.nn.functional.normalize(features.double(), dim=1).numpy()
    perplexity = min(30.0, (len(unit) - 1) / 3)  # scikit-learn requires perplexity < N
    coordinates = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(unit)
    return torch.from_numpy(coordinates)


def map_figure(coordinates: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], title: str) -> Figure:
    """The 2-D map of test embeddings, one colour per class (a legend up to 20 classes)."""
    figure, (ax,) = _figure(1, 1)
    figure.set_size_inches(6.4, 5.2)
    many = len(classes) > 20
    palette = "tab10" if len(classes) <= 10 else "tab20" if not many else "turbo"
    from matplotlib import colormaps

    cmap = colormaps[palette]
    xy = coordinates.numpy()
    for label in range(len(classes)):
        mask = (labels == label).numpy()
        if mask.any():
            color = cmap(label / max(1, len(classes) - 1)) if many else cmap(label)
            ax.scatter(xy[mask, 0], xy[mask, 1], s=4, color=color, label=classes[label], linewidths=0, alpha=0.8)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    if not many:
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=3, frameon=False)
    return figure
