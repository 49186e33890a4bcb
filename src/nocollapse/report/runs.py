"""A run directory read back for a report: config, environment, metric lines, evaluation, test embeddings.

Reading is tolerant where a run may legitimately lack something (a run still training has no
``eval.json``; a run evaluated by an older version has no ``test_embeddings.pt``; the last metric
line of a killed run may be cut short) and strict where the directory is not a run at all.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nocollapse.config import TRAINING_EVAL_KEYS, Config, EvalConfig
from nocollapse.errors import UserError
from nocollapse.methods import method_label
from nocollapse.train.evaluation import EMBEDDINGS_FILE, EVAL_FILE
from nocollapse.train.loop import METRICS

GEOMETRY_KEYS = {"dim", "uniformity", "rankme", "separability", "std"}
FEW_LABEL_KEYS = {"subset", "labels", "draws", "knn", "linear", "summary"}
FINETUNE_KEYS = {"subset", "labels", "draws", "steps", "recipe", "pretrained", "scratch"}
# Keys of a training-window metric line that are not loss terms.
WINDOW_KEYS = {"step", "epoch", "lr", "tau", "img/s", "loss", "grad_norm", "embedding_std", "online_top1"}
EVENT_KEYS = ("resumed", "error", "stopped", "warning", "skipped")


@dataclass
class TestEmbeddings:
    """The trained encoder's features of a fixed subset of test images (``test_embeddings.pt``)."""

    features: torch.Tensor  # (N, D) float32
    labels: torch.Tensor  # (N,) int64
    classes: list[str]


@dataclass
class RunRecord:
    """Everything a report shows about one run.

    ``windows`` are the training-window lines of ``metrics.jsonl`` (mean loss terms, lr, τ, img/s
    since the previous line), ``monitors`` the per-epoch lines (kNN, geometry), ``events`` the resume,
    stop (SIGTERM, Ctrl-C), error, collapse warning and skipped-step lines; ``evaluation`` is ``eval.json`` (None before evaluation).
    """

    path: Path
    label: str
    config: dict[str, Any]
    environment: dict[str, Any]
    windows: list[dict[str, Any]] = field(default_factory=list)
    monitors: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None
    embeddings: TestEmbeddings | None = None
    embeddings_problem: str = ""  # why ``embeddings`` is None
    skipped_lines: int = 0

    @property
    def method(self) -> str:
        """The method with its regularizers (:func:`~nocollapse.methods.method_label`), or its bare name when the config
        does not parse."""
        try:
            return method_label(Config.from_dict(self.config))
        except (UserError, ValueError, TypeError):
            return str(self.config.get("method", {}).get("name", "?"))

    @functools.cached_property
    def final_eval(self) -> dict[str, Any]:
        """The ``eval`` settings of the final evaluation, which a re-evaluation may have changed (:func:`final_eval_settings`)."""
        return final_eval_settings(self.config, self.evaluation)

    @property
    def dataset(self) -> str:
        return str(self.config.get("data", {}).get("dataset", "?"))

    def loss_terms(self) -> list[str]:
        """The names of the loss terms logged, in first-seen order, the total ``loss`` first."""
        names = ["loss"] if any("loss" in w for w in self.windows) else []
        for window in self.windows:
            names += [key for key in window if key not in WINDOW_KEYS and key not in names and isinstance(window[key], (int, float))]
        return names

    def trained_row(self) -> dict[str, Any] | None:
        """The evaluation row of the trained encoder (the last row of ``eval.json``), or None."""
        rows = (self.evaluation or {}).get("rows", [])
        return rows[-1] if rows else None

    def baseline_rows(self) -> list[dict[str, Any]]:
        """The evaluation rows before the trained one: raw pixels and the random encoder."""
        return (self.evaluation or {}).get("rows", [])[:-1]


def knn_key(record: dict[str, Any]) -> str | None:
    """The ``knn_top1_k<k>`` key of a monitor line, or None."""
    return next((key for key in record if key.startswith("knn_top1_k")), None)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error}); the file is damaged") from None


def final_eval_settings(config: dict[str, Any], evaluation: dict[str, Any] | None) -> dict[str, Any]:
    """The ``eval`` settings the final evaluation ran with, without those that act only while training: ``eval.json``'s
    ``eval_config`` where it has one (`nocollapse eval RUN eval.KEY=VALUE` changes them after config.json was written),
    else config.json's. Keys this version does not know are left out, and a record that does not parse gives way to
    config.json's settings."""
    known = {f.name for f in dataclasses.fields(EvalConfig)}
    saved = config.get("eval")
    settings = {key: value for key, value in saved.items() if key in known} if isinstance(saved, dict) else {}
    recorded = (evaluation or {}).get("eval_config")
    if isinstance(recorded, dict):
        try:
            settings = Config.from_dict({"eval": settings | {key: value for key, value in recorded.items() if key in known}}).to_dict()["eval"]
        except (UserError, ValueError, TypeError):
            pass
    return {key: value for key, value in settings.items() if f"eval.{key}" not in TRAINING_EVAL_KEYS}


def _complete_config(saved: dict[str, Any]) -> dict[str, Any]:
    """The saved config with the settings it predates filled with their defaults (as `nocollapse eval`
    reads it), so runs from different versions compare setting by setting; as saved if it does not parse."""
    try:
        return Config.from_dict(saved).to_dict()
    except (UserError, ValueError, TypeError):
        return saved


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], int]:
    """(windows, monitor lines, events, lines skipped) of a ``metrics.jsonl``; unreadable lines are skipped."""
    windows, monitors, events, skipped = [], [], [], 0
    if not path.is_file():
        return windows, monitors, events, skipped
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1  # a line cut short when the run was killed
            continue
        if not isinstance(record, dict):
            skipped += 1
        elif any(key in record for key in EVENT_KEYS):
            events.append(record)
        elif "loss" in record:
            windows.append(record)
        elif knn_key(record) or "geometry" in record:
            monitors.append(record)
        else:
            skipped += 1
    return windows, monitors, events, skipped


def read_embeddings(path: Path) -> tuple[TestEmbeddings | None, str]:
    """(``test_embeddings.pt``, "") when present and well-formed, else (None, why): a damaged file costs
    the map, not the report."""
    if not path.is_file():
        return None, f"no {path.name}; `nocollapse eval {path.parent}` saves it"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        embeddings = TestEmbeddings(saved["features"].float(), saved["labels"].long(), list(saved["classes"]))
    except Exception as error:
        return None, f"{path} is damaged ({type(error).__name__}); `nocollapse eval {path.parent}` writes it again"
    if embeddings.features.ndim != 2 or embeddings.labels.shape != embeddings.features.shape[:1]:
        return None, f"{path} holds features {tuple(embeddings.features.shape)} and labels {tuple(embeddings.labels.shape)} that do not match"
    return embeddings, ""


def check_evaluation(evaluation: Any, path: Path) -> dict[str, Any]:
    """``eval.json`` as written by ``nocollapse eval``: rows with a name, a dim and their scores; else a UserError."""
    def fail(what: str) -> UserError:
        return UserError(f"{path} is not an evaluation nocollapse wrote ({what}); run `nocollapse eval {path.parent}` to rewrite it")

    if not isinstance(evaluation, dict) or not isinstance(evaluation.get("rows", []), list):
        raise fail("no list of rows")
    finetuned, transferred = evaluation.get("finetune", []), evaluation.get("transfer", [])
    if not isinstance(finetuned, list) or not all(isinstance(e, dict) and FINETUNE_KEYS <= e.keys() for e in finetuned):
        raise fail(f"fine-tuning entries without {sorted(FINETUNE_KEYS)}")
    if not isinstance(transferred, list) or not all(isinstance(t, dict) and {"dataset", "conversion"} <= t.keys()
                                                    and isinstance(t.get("rows"), list) for t in transferred):
        raise fail("transfer sections without a dataset, a conversion and rows")
    entries = [*evaluation.get("rows", []), *evaluation.get("projections", []), *(row for t in transferred for row in t["rows"])]
    for row in entries:
        if not isinstance(row, dict) or not isinstance(row.get("name"), str) or not isinstance(row.get("dim"), int):
            raise fail("a row without a name or dim")
        geometry = row.get("geometry")
        if geometry is not None and not (isinstance(geometry, dict) and GEOMETRY_KEYS <= geometry.keys()):
            raise fail(f"geometry without {sorted(GEOMETRY_KEYS)}")
        if not all(isinstance(row.get(key, {}), dict) for key in ("knn", "knn_euclidean", "linear")):
            raise fail("scores that are not tables")
        few = row.get("few_labels", [])
        if not isinstance(few, list) or not all(isinstance(s, dict) and FEW_LABEL_KEYS <= s.keys() and isinstance(s["summary"], dict) for s in few):
            raise fail(f"few-label scores without {sorted(FEW_LABEL_KEYS)}")
    return evaluation


def load_run(run_dir: Path | str, label: str | None = None) -> RunRecord:
    """Read ``run_dir`` (a directory ``nocollapse train`` wrote) for a report."""
    path = Path(run_dir)
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a nocollapse run directory (no config.json); pass directories that `nocollapse train` wrote")
    environment = _read_json(path / "environment.json") if (path / "environment.json").is_file() else {}
    windows, monitors, events, skipped = read_metrics(path / METRICS)
    evaluation = check_evaluation(_read_json(path / EVAL_FILE), path / EVAL_FILE) if (path / EVAL_FILE).is_file() else None
    config = _read_json(path / "config.json")
    if not isinstance(config, dict):
        raise UserError(f"{path / 'config.json'} is not a nocollapse config (not a JSON object)")
    config = _complete_config(config)
    embeddings, embeddings_problem = read_embeddings(path / EMBEDDINGS_FILE)
    return RunRecord(path=path, label=label or path.resolve().name, config=config,
                     environment=environment if isinstance(environment, dict) else {}, windows=windows, monitors=monitors, events=events,
                     evaluation=evaluation, embeddings=embeddings, embeddings_problem=embeddings_problem, skipped_lines=skipped)


def expand_run_dirs(paths: Sequence[Path | str]) -> list[Path]:
    """``paths`` with each directory of runs (a sweep's ``--out``, or any folder of run directories) replaced by its runs:
    in the sweep's order where it has a ``sweep.json``, else by name. A run directory stays as it is."""
    expanded: list[Path] = []
    for path in map(Path, paths):
        if (path / "config.json").is_file() or not path.is_dir():
            expanded.append(path)  # a run, or not a directory at all: load_run says what is wrong with it
            continue
        runs = sorted(child for child in path.iterdir() if (child / "config.json").is_file())
        if (path / "sweep.json").is_file():
            try:
                order = [record["name"] for record in json.loads((path / "sweep.json").read_text())["runs"]]
            except (json.JSONDecodeError, KeyError, TypeError):
                order = []
            runs.sort(key=lambda child: order.index(child.name) if child.name in order else len(order))
        if not runs:
            raise UserError(f"{path} is neither a run directory (no config.json) nor a directory of runs; pass directories that "
                            "`nocollapse train` or `nocollapse sweep` wrote")
        expanded += runs
    return expanded


def load_runs(run_dirs: list[Path | str]) -> list[RunRecord]:
    """Read several runs, labelled by directory name (with the parent's name where two names clash, and a
    number where they still do): labels key colours, rows and files, so they must differ."""
    if not run_dirs:
        raise UserError("no run directories given; pass one or more directories that `nocollapse train` wrote")
    paths = [Path(p).resolve() for p in run_dirs]
    names = [p.name for p in paths]
    labels = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]
    labels = [f"{label} #{i + 1}" if labels.count(label) > 1 else label for i, label in enumerate(labels)]
    return [load_run(p, label) for p, label in zip(paths, labels)]


def _few_label_key(scores: Sequence[dict[str, Any]]) -> str:
    """What identifies a row's few-label scores across runs: their values, not how long they took."""
    return json.dumps([{k: v for k, v in entry.items() if k != "seconds"} for entry in scores], sort_keys=True)


def few_label_entries(runs: Sequence[RunRecord]) -> list[tuple[dict[str, Any], list[str], str, bool]]:
    """(row, labels of the runs it is from, dataset, is baseline) for every row scored with few labels: a baseline
    shared by runs (same dataset, name, dim and the very same few-label figures, i.e. the same draws) once, labelled
    with exactly those runs."""
    entries: list[tuple[dict[str, Any], list[str], str, bool]] = []
    for run in runs:
        rows = (run.evaluation or {}).get("rows", [])
        for index, row in enumerate(rows):
            if not row.get("few_labels"):
                continue
            baseline = index < len(rows) - 1
            key = (run.dataset, row["name"], row["dim"], _few_label_key(row["few_labels"]))
            same = next((e for e in entries if baseline and e[3] and (e[2], e[0]["name"], e[0]["dim"], _few_label_key(e[0]["few_labels"])) == key), None)
            if same:
                same[1].append(run.label)
            else:
                entries.append((row, [run.label], run.dataset, baseline))
    return entries
