"""``write_report``: one self-contained HTML page (plots inline as PNG, also saved beside it) for one or many runs.

The page, top to bottom: what was trained (and the settings that differ between runs), accuracy
beside the raw-pixel and random-encoder baselines, geometry of the test embeddings, then the plots
(loss terms, kNN over epochs, lr and τ, geometry over epochs, singular spectra, t-SNE maps), and
last each run's environment (git commit, torch, hardware, command) and full config.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nocollapse.config import flatten
from nocollapse.errors import UserError
from nocollapse.report import plots
from nocollapse.report.runs import RunRecord, expand_run_dirs, few_label_entries, knn_key, load_runs
from nocollapse.report.seeds import (SEED_FREE_KEYS, TEST_NOTE, SeedScores, format_cell, group_by_seed, markdown_table, mean_std_text,
                                     seed_scores, setting)
from nocollapse.train.checkpoint import atomic_write_bytes
from nocollapse.train.run_data import UNLABELLED_PROBE_IMAGES

REPORT_FILE = "index.html"
SEEDS_FILE = "seeds.md"  # the table over seeds in Markdown, beside the page

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2329; margin: 0; background: #f6f7f9; }
main { max-width: 1280px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 36px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #d5dae0; }
p.lede { color: #5a6570; margin: 0 0 16px; }
p.caption { color: #5a6570; margin: 4px 0 12px; max-width: 900px; }
.note { background: #fff7e0; border-left: 4px solid #e0a800; padding: 6px 12px; margin: 8px 0; }
.warning { background: #fff0e0; border-left: 4px solid #e65100; padding: 6px 12px; margin: 8px 0; }
.error { background: #fdecea; border-left: 4px solid #c62828; padding: 6px 12px; margin: 8px 0; }
table { border-collapse: collapse; background: #fff; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e3e6ea; text-align: left; vertical-align: top; }
th { background: #eef1f4; font-weight: 600; }
td.num, th.num { text-align: right; }
tr.baseline td { color: #5a6570; }
td.best { font-weight: 700; }
img { max-width: 100%; background: #fff; border: 1px solid #e3e6ea; }
.maps { display: flex; flex-wrap: wrap; gap: 16px; }
.maps figure { margin: 0; flex: 1 1 520px; max-width: 640px; }
details { background: #fff; border: 1px solid #e3e6ea; padding: 6px 12px; margin: 8px 0; }
summary { cursor: pointer; font-weight: 600; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; }
nav a { margin-right: 12px; }
"""


@dataclass
class PageFigure:
    """A figure of the page: its PNG file (None when it could not be drawn) and what to read in it."""

    file: str | None
    caption: str
    note: str = ""


def _cell(value: Any, digits: int = 2, scale: float = 1.0) -> str:
    """A number as ``scale·value`` with ``digits`` decimals, a missing one as a dash, anything else as text."""
    if value is None:
        return "–"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{scale * value:.{digits}f}"
    return str(value)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, numeric_from: int, row_classes: Sequence[str] = (),
           best: frozenset[tuple[int, int]] | set[tuple[int, int]] = frozenset(), table_id: str = "") -> str:
    """An HTML table of already-formatted cells; columns from ``numeric_from`` on are right-aligned."""
    head = "".join(f'<th class="num">{html.escape(h)}</th>' if i >= numeric_from else f"<th>{html.escape(h)}</th>" for i, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        cells = []
        for c, value in enumerate(row):
            classes = " ".join(filter(None, ["num" if c >= numeric_from else "", "best" if (r, c) in best else ""]))
            cells.append(f'<td class="{classes}">{html.escape(value)}</td>' if classes else f"<td>{html.escape(value)}</td>")
        row_class = row_classes[r] if r < len(row_classes) and row_classes[r] else ""
        body.append(f'<tr class="{row_class}">' + "".join(cells) + "</tr>" if row_class else "<tr>" + "".join(cells) + "</tr>")
    ident = f' id="{table_id}"' if table_id else ""
    thead = f"<thead><tr>{head}</tr></thead>" if any(header) else ""  # a key-value table needs no header
    return f"<table{ident}>{thead}<tbody>{''.join(body)}</tbody></table>"


def _status(run: RunRecord) -> str:
    """Where the run stands, from its files: stopped by a fault, evaluated, trained, or still going."""
    errors = [event["error"] for event in run.events if "error" in event]
    resumes = sum("resumed" in event for event in run.events)
    if errors:
        status = f"stopped: {errors[-1]}"
    elif run.evaluation:
        status = "evaluated"
    elif run.events and "stopped" in run.events[-1]:
        status = f"stopped by {run.events[-1]['stopped']} at step {run.events[-1].get('step')} (resumable)"
    elif (run.path / "encoder.pt").is_file():
        status = "trained, not evaluated"
    else:
        status = "interrupted or still training"
    warnings = sum("warning" in event for event in run.events)
    skipped = max((event.get("skipped_steps", 0) for event in run.events if "skipped" in event), default=0)
    marks = [f"resumed {resumes}×" if resumes else "", f"{warnings} collapse warning(s)" if warnings else "",
             f"{skipped} non-finite step(s) skipped" if skipped else ""]
    return status + "".join(f"; {mark}" for mark in marks if mark)


def alerts(runs: Sequence[RunRecord]) -> str:
    """A highlighted line for each collapse warning and skipped step of the runs, where they cannot be missed."""
    lines = []
    for run in runs:
        for event in run.events:
            if "warning" in event:
                lines.append(f'<p class="warning">{html.escape(run.label)}, step {event.get("step")}: {html.escape(str(event["warning"]))}</p>')
            elif "skipped" in event:
                lines.append(f'<p class="warning">{html.escape(run.label)}: step {event.get("step")} skipped '
                             f'({html.escape(str(event["skipped"]))})</p>')
    return "".join(lines)


def training_table(runs: Sequence[RunRecord]) -> str:
    """One row per run: what it trained, how far it got, its last loss, kNN and speed."""
    header = ["run", "method", "preset", "dataset", "backbone", "status", "epoch", "steps", "batch", "final loss", "last kNN (%)", "median img/s"]
    rows = []
    for run in runs:
        optim, last = run.config.get("optim", {}), run.windows[-1] if run.windows else {}
        monitor = next((m for m in reversed(run.monitors) if knn_key(m)), None)
        speeds = [w["img/s"] for w in run.windows if "img/s" in w]
        rows.append([run.label, run.method, str(run.config.get("preset", "?")), run.dataset, str(run.config.get("model", {}).get("backbone", "?")),
                     _status(run), f"{_cell(last.get('epoch'), 2)} / {optim.get('epochs', '?')}", _cell(last.get("step"), 0),
                     _cell(optim.get("batch_size"), 0), _cell(last.get("loss"), 4),
                     _cell(monitor[knn_key(monitor)], 2, 100) if monitor else "–",
                     _cell(statistics.median(speeds), 0) if speeds else "–"])
    return html_table(header, rows, numeric_from=6, table_id="training-table")


def differing_settings(runs: Sequence[RunRecord]) -> str:
    """A table of the settings whose values differ between the runs (empty for one run); where runs differ only by
    seed, one column per setting (its seeds in the first row) and the seed-free keys left out."""
    if len(runs) < 2:
        return ""
    groups = group_by_seed(runs)
    grouped = len(groups) < len(runs)
    ignored = SEED_FREE_KEYS if grouped else {"run.name", "run.out_dir"}  # these always differ; where else each ran may matter
    flat = [setting(group.runs[0], ignored) for group in groups]
    keys = sorted(k for k in set().union(*flat) if k not in ignored and len({json.dumps(f.get(k)) for f in flat}) > 1)
    if not keys:
        return "<p>The runs share every setting" + (" but the seed" if grouped else "") + ".</p>"
    rows = [[key] + [json.dumps(f.get(key)) if not isinstance(f.get(key), str) else f[key] for f in flat] for key in keys]
    if grouped:
        rows.insert(0, ["run.seed"] + [",".join(map(str, group.seeds)) for group in groups])
    return "<p>Settings that differ between the runs:</p>" + html_table(["setting"] + [group.label for group in groups], rows,
                                                                     numeric_from=len(groups) + 1, table_id="settings-table")


def seed_table(scores: SeedScores) -> str:
    """Each setting's figures over its seeds, mean ± std, bold where the test cannot tell it from the best (the p value
    against the best in each cell's tooltip)."""
    header = ["setting", "n", "seeds", *(measure.name for measure in scores.measures)]
    body = []
    for group, cells in zip(scores.groups, scores.cells):
        row = [f"<td>{html.escape(group.label)}</td>", f'<td class="num">{group.evaluated}</td>',
               f"<td>{html.escape(','.join(map(str, group.seeds)))}</td>"]
        for cell, measure in zip(cells, scores.measures):
            bold = cell is not None and (cell.best or cell.tied)
            tip = ("best mean" if cell.best else f"Welch p = {cell.p_value:.3g} against the best" if cell.p_value is not None
                   else "one seed: not tested") if cell is not None else ""
            row.append(f'<td class="num{" best" if bold else ""}" title="{html.escape(tip)}">{html.escape(format_cell(cell, measure))}</td>')
        body.append("<tr>" + "".join(row) + "</tr>")
    head = "".join(f'<th class="num">{html.escape(h)}</th>' if i >= 3 or i == 1 else f"<th>{html.escape(h)}</th>" for i, h in enumerate(header))
    return f'<table id="seeds-table"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


SCORE_KEYS = ("knn", "knn_euclidean", "linear")


def _same_scores(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two evaluations of one baseline agree on every score both have (older runs may lack some), and share at least one."""
    shared = [(key, k) for key in SCORE_KEYS for k in set(a.get(key) or {}) & set(b.get(key) or {})]
    return bool(shared) and all(a[key][k] == b[key][k] for key, k in shared)


def _evaluation_rows(runs: Sequence[RunRecord]) -> list[tuple[dict[str, Any], str, str, bool]]:
    """(eval row, run labels, dataset, is baseline): the baselines once each, then every trained row.

    Runs on one dataset share the raw-pixel baseline, and runs with one architecture and seed share the
    random encoder: a baseline that agrees with an earlier one on every score they both have is merged
    into it (the union of their scores), so it appears once with all its runs.
    """
    baselines: list[tuple[dict[str, Any], list[str], str]] = []
    for run in runs:
        for row in run.baseline_rows():
            same = next((entry for entry in baselines if (entry[2], entry[0]["name"], entry[0]["dim"]) == (run.dataset, row["name"], row["dim"])
                         and _same_scores(entry[0], row)), None)
            if same is None:
                baselines.append(({**row, **{key: dict(row.get(key) or {}) for key in SCORE_KEYS}}, [run.label], run.dataset))
                continue
            merged, labels, _ = same
            for key in SCORE_KEYS:
                merged[key].update(row.get(key) or {})
            merged["geometry"] = merged.get("geometry") or row.get("geometry")
            labels.append(run.label)
    rows = [(row, ", ".join(labels), dataset, True) for row, labels, dataset in baselines]
    return rows + [(row, run.label, run.dataset, False) for run in runs if (row := run.trained_row())]


def accuracy_table(runs: Sequence[RunRecord]) -> str:
    """Accuracies (%) of each trained encoder and of the baselines, the best of each column in bold."""
    entries = [entry for entry in _evaluation_rows(runs) if any(entry[0].get(key) for key in SCORE_KEYS)]
    if not entries:
        return ""
    ks = sorted({int(k) for row, *_ in entries for k in row.get("knn", {})})
    euclid = sorted({int(k) for row, *_ in entries for k in row.get("knn_euclidean", {})})
    probes = sorted({p for row, *_ in entries for p in row.get("linear", {})})
    header = (["representation", "run", "dataset", "dim"] + [f"kNN k={k}" for k in ks] + [f"kNN-euclid k={k}" for k in euclid]
              + [f"linear {p}" for p in probes])
    values = [[row.get("knn", {}).get(str(k)) for k in ks] + [row.get("knn_euclidean", {}).get(str(k)) for k in euclid]
              + [row.get("linear", {}).get(p) for p in probes] for row, *_ in entries]
    best = set()  # the best of each column among the rows of one dataset: accuracies of different datasets do not compare
    for dataset in {e[2] for e in entries}:
        rows_of = [r for r, e in enumerate(entries) if e[2] == dataset]
        for c in range(len(header) - 4):
            column = [values[r][c] for r in rows_of if values[r][c] is not None]
            best |= {(r, c + 4) for r in rows_of if column and values[r][c] == max(column)}
    rows = [[row["name"], labels, dataset, str(row["dim"])] + [_cell(v, 2, 100) for v in vals]
            for (row, labels, dataset, _), vals in zip(entries, values)]
    return html_table(header, rows, numeric_from=3, row_classes=["baseline" if e[3] else "" for e in entries], best=best,
                  table_id="accuracy-table")


def few_label_table(runs: Sequence[RunRecord]) -> str:
    """Accuracies (%) fitted on few labels, mean ± std over the draws: one line per representation and label subset,
    a baseline shared by runs once (:func:`few_label_entries`); empty when no run was evaluated with few labels."""
    entries = [(row, labels, dataset, baseline, scores) for row, labels, dataset, baseline in few_label_entries(runs)
               for scores in row["few_labels"]]
    if not entries:
        return ""
    columns = list(dict.fromkeys(column for *_, scores in entries for column in scores["summary"]))
    header = ["representation", "run", "dataset", "labels", "per draw", "draws"] + columns

    def cell(summary: dict[str, Any], column: str) -> str:
        return f"{100 * summary[column]['mean']:.2f} ± {100 * summary[column]['std']:.2f}" if column in summary else "–"

    rows = [[row["name"], ", ".join(labels), dataset, scores["subset"], str(scores["labels"]), str(scores["draws"])]
            + [cell(scores["summary"], column) for column in columns] for row, labels, dataset, _, scores in entries]
    return html_table(header, rows, numeric_from=4, row_classes=["baseline" if e[3] else "" for e in entries], table_id="few-labels-table")


def finetune_table(runs: Sequence[RunRecord]) -> str:
    """Fine-tuned top-1 (%) of each run's encoder and of the same network from scratch, per labelled set; empty without any."""
    rows, recipes = [], []
    for run in runs:
        for entry in (run.evaluation or {}).get("finetune") or []:
            gain = statistics.fmean(entry["pretrained"]) - statistics.fmean(entry["scratch"])
            rows.append([run.label, run.dataset, entry["subset"], str(entry["labels"]), str(entry["draws"]), str(entry["steps"]),
                         mean_std_text(entry["pretrained"], 100), mean_std_text(entry["scratch"], 100), f"{100 * gain:+.2f}"])
            recipes.append(f"{run.label}: {entry['recipe']}")
    if not rows:
        return ""
    table = html_table(["run", "dataset", "labels", "per draw", "draws", "steps", "pretrained", "from scratch", "gain"], rows, numeric_from=3,
                   table_id="finetune-table")
    return table + "".join(f'<p class="caption">{html.escape(recipe)}</p>' for recipe in dict.fromkeys(recipes))


def transfer_table(runs: Sequence[RunRecord]) -> str:
    """kNN and linear top-1 (%) on each transfer target: its baselines (grey) and the run's encoder; empty without any."""
    entries = [(section, row, run) for run in runs for section in (run.evaluation or {}).get("transfer") or [] for row in section["rows"]]
    if not entries:
        return ""
    ks = sorted({int(k) for _, row, _ in entries for k in row.get("knn", {})})
    header = ["target", "conversion", "representation", "run", "dim"] + [f"kNN k={k}" for k in ks] + ["linear top1"]
    rows = [[section["dataset"], section["conversion"], row["name"], run.label, str(row["dim"])]
            + [_cell(row.get("knn", {}).get(str(k)), 2, 100) for k in ks] + [_cell(row.get("linear", {}).get("top1"), 2, 100)]
            for section, row, run in entries]
    baseline = ["baseline" if row is not section["rows"][-1] else "" for section, row, _ in entries]
    return html_table(header, rows, numeric_from=4, row_classes=baseline, table_id="transfer-table")


def unscored_note(runs: Sequence[RunRecord]) -> str:
    """A line naming the evaluated runs that have no accuracy: their data has no labelled train and test splits."""
    unscored = [run.label for run in runs if (row := run.trained_row()) and not any(row.get(key) for key in SCORE_KEYS)]
    if not unscored:
        return ""
    return (f'<p class="note">No accuracy for {html.escape(", ".join(unscored))}: accuracy needs labelled train/ and test/ splits, '
            f"which the data has not; the geometry below needs no labels (measured on up to {UNLABELLED_PROBE_IMAGES:,} pretraining images).</p>")


def geometry_table(runs: Sequence[RunRecord]) -> str:
    """Geometry of the test embeddings: the baselines (once where runs measured the same values; alignment
    depends on each run's augmentation), every trained encoder, then each run's projections."""
    baselines: dict[str, tuple[str, list[str], dict[str, Any]]] = {}
    for run in runs:
        for row in run.baseline_rows():
            if geometry := row.get("geometry"):
                scores = {key: value for key, value in geometry.items() if key != "spectrum"}
                key = json.dumps([run.dataset, row["name"], scores], sort_keys=True)
                baselines.setdefault(key, (row["name"], [], geometry))[1].append(run.label)
    entries = [(name, ", ".join(labels), geometry, True) for name, labels, geometry in baselines.values()]
    entries += [(row["name"], run.label, row.get("geometry"), False) for run in runs if (row := run.trained_row())]
    entries += [(p["name"], run.label, p.get("geometry"), p["name"].startswith("random")) for run in runs
                for p in (run.evaluation or {}).get("projections", [])]
    entries = [e for e in entries if e[2]]
    if not entries:
        return ""
    header = ["representation", "run", "dim", "alignment", "uniformity", "RankMe", "separability", "std"]
    rows = [[name, labels, str(g["dim"]), _cell(g.get("alignment"), 3), _cell(g["uniformity"], 3), _cell(g["rankme"], 1),
             _cell(g["separability"], 3), _cell(g["std"], 4)] for name, labels, g, _ in entries]
    return html_table(header, rows, numeric_from=2, row_classes=["baseline" if e[3] else "" for e in entries], table_id="geometry-table")


def environment_section(run: RunRecord) -> str:
    """A run's code version, software, hardware, command, resumes, faults and full config."""
    env = run.environment
    hardware = env.get("gpu") or env.get("cpu_model") or "–"
    facts = [("directory", str(run.path)), ("git commit", env.get("git", "unknown")), ("torch", env.get("torch", "?")),
             ("python", env.get("python", "?")), ("platform", env.get("platform", "?")), ("device", env.get("device", "?")), ("processes", str(env.get("processes", 1))),
             ("hardware", hardware), ("CPU cores / torch threads", f"{env.get('cpu_count', '?')} / {env.get('torch_threads', '?')}"),
             ("command", env.get("command", "?"))]
    for event in run.events:
        if "resumed" in event:
            resumed = event["resumed"]
            facts.append((f"resumed at step {event.get('step')}",
                          f"torch {resumed.get('torch', '?')} on {resumed.get('device', '?')}, git {resumed.get('git', '?')}"))
    parts = [html_table(["", ""], [[k, str(v)] for k, v in facts], numeric_from=2)]
    parts += [f'<p class="error">Training stopped at step {event.get("step")}: {html.escape(str(event["error"]))}</p>'
              for event in run.events if "error" in event]
    if run.skipped_lines:
        parts.append(f'<p class="note">{run.skipped_lines} unreadable line(s) of metrics.jsonl were skipped '
                     "(a line cut short when the run was killed).</p>")
    re_evaluated = {f"final eval.{key}": value for key, value in run.final_eval.items() if value != run.config.get("eval", {}).get(key)}
    config_rows = [[key, json.dumps(value) if not isinstance(value, str) else value] for key, value in (flatten(run.config) | re_evaluated).items()]
    parts.append(f"<details><summary>config ({len(config_rows)} settings)</summary>{html_table(['setting', 'value'], config_rows, numeric_from=2)}</details>")
    return f'<details open><summary>{html.escape(run.label)}</summary>{"".join(parts)}</details>'


FIGURES: list[tuple[str, str, Callable[[Sequence[RunRecord]], Any], str]] = [
    ("loss", "Training loss terms", plots.loss_figure,
     "Mean of each loss term over each logging window. The total is what the optimiser minimises; the other panels are its weighted parts."),
    ("knn", "Accuracy during training", plots.knn_figure,
     "Top-1 of a cosine kNN classifier on the test split, measured at the end of epochs from a fixed bank of training images "
     "(eval.monitor_train_samples). Star: the final evaluation, which votes from the whole training set (or eval.train_samples of it). Dashed: the online "
     "probe (eval.online_probe), a linear head trained alongside on the detached features of the training views, its top-1 on "
     "each window's batches before it learns from them; it reads below the final probe, and its use is the trend. Dotted: "
     "raw pixels in the final evaluation, the bar a representation must clear."),
    ("schedule", "Learning rate and EMA momentum τ", plots.schedule_figure,
     "The learning rate (warm-up then decay) and, for methods with a target network, the EMA momentum τ that rises to 1."),
    ("geometry", "Alignment, uniformity and rank over epochs", plots.geometry_figure,
     "Wang & Isola's alignment (positive pairs) and uniformity (spread on the sphere), RankMe, and the per-dimension std of the "
     "normalised embeddings times √d (about 1 when spread, 0 when collapsed), of the test features (top) and projections (bottom). "
     "Dashed: the std of each training window's online projections; dotted: the level below which training warns of collapse. "
     "Collapse shows as uniformity rising to 0, RankMe falling to 1 and the std to 0."),
    ("labels", "Accuracy against the number of labels", plots.label_efficiency_figure,
     "Test top-1 of kNN and the linear probe fitted on class-balanced subsets of the training labels (eval.label_fractions, "
     "eval.shots), against the number of labelled images; bars: ±1 std over the draws of each subset, the same draws for every "
     "representation of a run. The last point is the whole training set (or the eval.train_samples the run fitted on). Dashed grey: the baselines. The gap between a trained "
     "line and the baselines at few labels is what pretraining saves in labelling. Where the run fine-tuned (eval.finetune_epochs), "
     "the last panel shows the fine-tuned encoder (solid) against the same network trained from scratch (dotted)."),
    ("seeds", "Over seeds: mean and spread", plots.seed_band_figure,
     "Each setting run with several seeds: the monitor's kNN top-1 and the total loss against epochs, the mean over its seeds "
     "as a line and ±1 sample std as a band. Bands that overlap along the curve are differences the seeds do not settle."),
    ("spectrum", "Singular spectrum of the test embeddings", plots.spectrum_figure,
     "Singular values σ_k/σ_1 of the test embeddings after training (log scale); dashed: the baselines. A spectrum that "
     "drops to ~0 after a few values is dimensional collapse, which uniformity can hide."),
]


# Figures of evaluations that runs make only when asked (eval.label_fractions, eval.shots, eval.finetune_epochs): no section without them.
OPTIONAL_FIGURES = {"labels", "seeds"}

MAP_CAPTION = ("t-SNE of the ℓ2-normalised encoder features of a fixed subset of test images, one colour per class. "
               "Neighbourhoods are meaningful; the distances between clusters and their sizes are not.")


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _safe_name(label: str) -> str:
    """``label`` with only letters, digits, ``-`` and ``_``: a file name on any system."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in label)


def write_report(run_dirs: Sequence[Path | str], out_dir: Path | str, *, title: str | None = None, tsne: bool = True,
                 log: Callable[[str], object] = print) -> Path:
    """Write ``out_dir/index.html`` (with each plot also as ``out_dir/*.png``) for the runs in ``run_dirs``.

    Plots need matplotlib and the t-SNE map scikit-learn (``pip install 'nocollapse[report]'``);
    without them the page says so and carries the tables and the other plots. ``tsne=False`` skips
    the maps (t-SNE of 2000 test embeddings takes about 12 s per run on 2 CPU cores). Returns the
    page's path.
    """
    runs = load_runs(expand_run_dirs(list(run_dirs)))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory for index.html and the PNG files")
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("map-[0-9]*-*.png"), *(out / f"{name}.png" for name, *_ in FIGURES), out / SEEDS_FILE]:
        stale.unlink(missing_ok=True)  # a plot that cannot be drawn this time must not show last time's
    notes: list[str] = []
    images: dict[str, bytes] = {}

    def save(name: str, figure: Any) -> str:
        data = plots.png_bytes(figure)
        atomic_write_bytes(out / name, lambda file: file.write(data))
        images[name] = data
        return name

    no_plots = plots.missing_extra("matplotlib")
    if no_plots:
        notes.append(no_plots)
        log(f"report: {no_plots}")
    sections = []
    for name, heading, build, caption in FIGURES:
        figure = None if no_plots else build(runs)
        if figure is None and name in OPTIONAL_FIGURES:
            continue
        note = "" if figure is not None else ("no plots without matplotlib" if no_plots else "no run logged what this plot needs")
        sections.append((name, heading, [PageFigure(save(f"{name}.png", figure) if figure is not None else None, caption, note)]))

    maps = []
    no_tsne = no_plots or plots.missing_extra("sklearn")
    if tsne and no_tsne and not no_plots:
        notes.append(no_tsne)
        log(f"report: {no_tsne}")
    groups = group_by_seed(runs)
    mapped = [group.runs[0] for group in groups]  # one map per setting: its seeds' maps look alike
    for index, run in enumerate(mapped, start=1):
        if not tsne:
            maps.append(PageFigure(None, "", f"{run.label}: maps were turned off (--no-map)"))
        elif no_tsne:
            maps.append(PageFigure(None, "", f"{run.label}: no map ({'matplotlib' if no_plots else 'scikit-learn'} is not installed)"))
        elif run.embeddings is None:
            maps.append(PageFigure(None, "", f"{run.label}: {run.embeddings_problem}"))
        elif problem := plots.unmappable(run.embeddings.features):
            maps.append(PageFigure(None, "", f"{run.label}: no map, {problem}"))
        else:
            embeddings = run.embeddings
            log(f"report: t-SNE of {len(embeddings.labels)} test embeddings of {run.label} …")
            coordinates = plots.tsne_map(embeddings.features, seed=int(run.config.get("run", {}).get("seed", 0)))
            figure = plots.map_figure(coordinates, embeddings.labels, embeddings.classes,
                                      f"{run.label}: t-SNE of {len(embeddings.labels)} test features")
            maps.append(PageFigure(save(f"map-{index}-{_safe_name(run.label)}.png", figure), run.label))
    sections.append(("map", "Map of the test embeddings", maps))

    scores = seed_scores(groups) if len(groups) < len(runs) else None
    if scores is not None:
        atomic_write_bytes(out / SEEDS_FILE, lambda file: file.write(markdown_table(scores).encode()))
    page = render_page(runs, sections, images, notes, title or ("nocollapse report: " + ", ".join(group.label for group in groups)), scores)
    path = out / REPORT_FILE
    atomic_write_bytes(path, lambda file: file.write(page.encode()))
    return path


def render_page(runs: Sequence[RunRecord], sections: list[tuple[str, str, list[PageFigure]]], images: dict[str, bytes], notes: list[str],
                title: str, seeds: SeedScores | None = None) -> str:
    """The page's HTML: tables first, then each section's figures (inline PNG) or the note saying why it has none."""
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    optional = [("few-labels", "few labels", few_label_table), ("finetune", "fine-tuning", finetune_table), ("transfer", "transfer", transfer_table)]
    nav = ([("training", "runs")] + ([("seeds", "over seeds")] if seeds else []) + [("accuracy", "accuracy")]
           + [(i, t) for i, t, table in optional if table(runs)]
           + [("geometry-scores", "geometry")]) + [(name, name) for name, *_ in sections] + [("environment", "environment")]
    parts = [f"<h1>{html.escape(title)}</h1>", f'<p class="lede">{len(runs)} run(s), report generated {generated}</p>',
             "<nav>" + "".join(f'<a href="#{i}">{html.escape(t)}</a>' for i, t in nav) + "</nav>"]
    parts += [f'<p class="note">{html.escape(note)}</p>' for note in notes]
    parts.append(f'<section id="training"><h2>What was trained</h2>{training_table(runs)}{alerts(runs)}{differing_settings(runs)}</section>')
    if seeds is not None:
        parts.append('<section id="seeds"><h2>Over seeds</h2><p class="caption">Runs that differ only by their seed are one setting: '
                     f'each figure of its trained encoder (accuracy %, geometry of the test features and projections) over them. '
                     f'{html.escape(TEST_NOTE)} The same table in Markdown: {SEEDS_FILE}.</p>'
                     + (f'<p class="note">{html.escape(seeds.untested)}</p>' if seeds.untested else "") + f"{seed_table(seeds)}</section>")
    accuracy = accuracy_table(runs) + unscored_note(runs)
    if not accuracy:
        accuracy = '<p class="note">No run has been evaluated yet: `nocollapse eval RUN_DIR` scores one.</p>'
    parts.append('<section id="accuracy"><h2>Accuracy against the baselines</h2>'
                 '<p class="caption">Top-1 accuracy (%) on the test split: cosine kNN (temperature-weighted votes) and a linear probe on '
                 'frozen features. Grey rows are the baselines: raw pixels, and the same encoder at its initialisation. Bold: best of the column for its dataset.</p>'
                 f"{accuracy}</section>")
    if few := few_label_table(runs):
        parts.append('<section id="few-labels"><h2>Accuracy with few labels</h2>'
                     '<p class="caption">The same scores with the kNN bank and the probe fitted on class-balanced subsets of the training labels '
                     '(a fraction of each class, or a number of shots per class), each drawn several times: mean ± sample std over the draws. '
                     'The test split is whole. kNN\'s k is clamped to the subset size.</p>'
                     f"{few}</section>")
    if finetuned := finetune_table(runs):
        parts.append('<section id="finetune"><h2>Fine-tuning against training from scratch</h2>'
                     '<p class="caption">The encoder and a linear head trained end to end on the labels (all of them, and each few-label '
                     'subset), beside the same architecture from the random-encoder baseline\'s initialisation with the same recipe, budget and seed: the gain is '
                     'what pretraining is worth once the labels may move the weights. Mean ± std over the label draws.</p>'
                     f"{finetuned}</section>")
    if transferred := transfer_table(runs):
        parts.append('<section id="transfer"><h2>Transfer to other datasets</h2>'
                     '<p class="caption">The frozen encoder on other datasets, their images converted to its input as the conversion '
                     'column says: kNN and the linear probe fitted on the target\'s train split, scored on its test split, beside the '
                     'pixels of the converted images and the random encoder (grey).</p>'
                     f"{transferred}</section>")
    geometry = geometry_table(runs) or '<p class="note">No geometry: the runs have not been evaluated.</p>'
    parts.append('<section id="geometry-scores"><h2>Geometry of the test embeddings</h2>'
                 '<p class="caption">Alignment and uniformity (Wang &amp; Isola; lower is better for both), RankMe (effective rank, at most dim), '
                 'class separability (inter- over intra-class cosine distance), and the mean per-dimension std of normalised embeddings '
                 '(≈ 1/√dim when spread, 0 when collapsed). Projections are the outputs the loss acts on.</p>'
                 f"{geometry}</section>")
    for name, heading, figures in sections:
        body = []
        for figure in figures:
            if figure.file:
                alt = html.escape(f"{heading}: {figure.caption}")
                img = f'<img src="{_png_uri(images[figure.file])}" alt="{alt}" data-file="{html.escape(figure.file)}">'
                body.append(f"<figure>{img}</figure>" if name == "map" else img)
                if name != "map":
                    body.append(f'<p class="caption">{html.escape(figure.caption)}</p>')
            else:
                body.append(f'<p class="note">{html.escape(figure.note)}</p>')
        inner = f'<div class="maps">{"".join(body)}</div><p class="caption">{MAP_CAPTION}</p>' if name == "map" else "".join(body)
        parts.append(f'<section id="{name}"><h2>{html.escape(heading)}</h2>{inner}</section>')
    parts.append('<section id="environment"><h2>Environment and configuration</h2>'
                 + "".join(environment_section(run) for run in runs) + "</section>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body><main>{''.join(parts)}</main></body></html>\n")
