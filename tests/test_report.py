"""Reports: the HTML page of two small runs has every section, decodable images, and the runs' own numbers."""

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_RUN, write_labelled_folder, write_tiny_fashion_mnist
from nocollapse.cli import main
from nocollapse.config import resolve_config
from nocollapse.errors import UserError
from nocollapse.report import load_run, write_report
from nocollapse.train.evaluation import evaluate_run
from nocollapse.train.loop import Trainer

# Spelled out, not derived from the code: dropping a required plot must fail the tests.
SECTIONS = ["training", "accuracy", "geometry-scores", "loss", "knn", "schedule", "geometry", "spectrum", "map", "environment"]
# With a run evaluated with few labels: their table, and their plot where matplotlib is installed.
FEW_LABEL_SECTIONS = ["training", "accuracy", "few-labels", "geometry-scores", "loss", "knn", "schedule", "geometry", "labels", "spectrum",
                      "map", "environment"]
PLOTS = {"loss.png", "knn.png", "schedule.png", "geometry.png", "labels.png", "spectrum.png"}
quiet = lambda *_: None


class Page(HTMLParser):
    """The parts of a report page the tests look at: section ids, images, tables as lists of rows of cell text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections, self.images, self.tables, self.notes = [], [], {}, []
        self._table, self._row, self._cell, self._note = None, None, None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "table":
            self._table = self.tables.setdefault(attrs.get("id", f"table{len(self.tables)}"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""
        elif tag == "p" and "note" in attrs.get("class", ""):
            self._note = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "p" and self._note is not None:
            self.notes.append(self._note)
            self._note = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._note is not None:
            self._note += data

    def rows(self, table: str) -> dict[tuple[str, str], dict[str, str]]:
        """Rows of a table by (representation, run), as {column header: cell}."""
        header, *body = self.tables[table]
        return {(row[0], row[1]): dict(zip(header, row)) for row in body}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A BYOL run and a BYOL + uniformity run on the tiny dataset, trained and evaluated, the second also with few labels."""
    root = tmp_path_factory.mktemp("report")
    data = write_tiny_fashion_mnist(root / "data")
    runs = []
    few_labels = ["regularizers.uniformity=1", "eval.label_fractions=0.25", "eval.shots=2", "eval.label_draws=2"]
    for name, extra in (("byol", []), ("byol-unif", few_labels)):
        config = resolve_config("fmnist", [*TINY_RUN, f"data.data_dir={data}", f"run.out_dir={root}", "run.device=cpu", f"run.name={name}", *extra])
        trainer = Trainer(config, progress=False, log=quiet)
        evaluate_run(trainer.fit(), config, train_set=trainer.train_set, test_set=trainer.test_set, log=quiet)
        runs.append(root / name)
    return runs


@pytest.fixture(scope="module")
def report(two_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("page")
    return out, Page(write_report(two_runs, out, log=quiet).read_text())


def test_the_page_has_every_section_and_a_figure_in_each(report):
    out, page = report
    assert page.sections == FEW_LABEL_SECTIONS
    files = {image["data-file"] for image in page.images}
    assert files == PLOTS | {"map-1-byol.png", "map-2-byol-unif.png"}
    assert not page.notes, page.notes  # nothing missing


def test_every_image_exists_decodes_and_is_the_one_inlined(report):
    out, page = report
    for image in page.images:
        path = out / image["data-file"]
        inline = base64.b64decode(image["src"].removeprefix("data:image/png;base64,"))
        assert inline == path.read_bytes()
        with Image.open(io.BytesIO(inline)) as png:
            png.verify()  # a complete, uncorrupted PNG
        with Image.open(path) as png:
            assert png.format == "PNG" and png.width > 300 and png.height > 200
            assert sum(count > 0 for count in png.convert("L").histogram()) > 10, f"{path.name} is blank"


def test_the_accuracy_table_holds_the_numbers_of_eval_json(two_runs, report):
    _, page = report
    rows = page.rows("accuracy-table")
    for run_dir in two_runs:
        evaluation = json.loads((run_dir / "eval.json").read_text())
        trained = evaluation["rows"][-1]
        cells = rows[(trained["name"], run_dir.name)]
        for k, accuracy in trained["knn"].items():
            assert cells[f"kNN k={k}"] == f"{100 * accuracy:.2f}"
        assert cells["linear top1"] == f"{100 * trained['linear']['top1']:.2f}"
        assert cells["dim"] == str(trained["dim"])
    # The two runs share data, architecture and seed: their baselines are identical and listed once for both.
    baselines = [key for key in rows if key[0] in ("raw pixels", "random convnet")]
    assert baselines == [("raw pixels", "byol, byol-unif"), ("random convnet", "byol, byol-unif")]
    raw = json.loads((two_runs[0] / "eval.json").read_text())["rows"][0]
    assert rows[baselines[0]]["kNN k=20"] == f"{100 * raw['knn']['20']:.2f}"


def test_the_few_label_table_holds_the_means_and_spreads_of_eval_json(two_runs, report):
    _, page = report
    header, *body = page.tables["few-labels-table"]
    cells = {(row[0], row[1], row[3]): dict(zip(header, row)) for row in body}
    evaluation = json.loads((two_runs[1] / "eval.json").read_text())
    for row in evaluation["rows"]:
        # Only this run was scored with few labels: every line is its own, the baselines too.
        run = "byol-unif"
        assert [scores["subset"] for scores in row["few_labels"]] == ["25%", "2-shot"]
        for scores in row["few_labels"]:
            line = cells[(row["name"], run, scores["subset"])]
            assert line["per draw"] == str(scores["labels"]) and line["draws"] == "2"
            for k, values in scores["knn"].items():
                mean, std = np.mean(values), np.std(values, ddof=1)
                assert line[f"kNN k={k}"] == f"{100 * mean:.2f} ± {100 * std:.2f}"
            assert line["linear"] == f"{100 * np.mean(scores['linear']):.2f} ± {100 * np.std(scores['linear'], ddof=1):.2f}"
    assert not any(row[1] == "byol" for row in body)  # the run without few labels has no line of its own


def test_fine_tuning_and_transfer_get_their_sections_with_the_numbers_of_eval_json(tiny_data, tmp_path):
    folder = write_labelled_folder(tmp_path / "colours")
    config = resolve_config("fmnist", [*TINY_RUN, f"data.data_dir={tiny_data}", f"run.out_dir={tmp_path}", "run.device=cpu", "run.name=ft",
                                       "eval.finetune_epochs=1", "eval.finetune_min_steps=4", f"eval.transfer=image-folder:{folder}"])
    trainer = Trainer(config, progress=False, log=quiet)
    evaluate_run(trainer.fit(), config, train_set=trainer.train_set, test_set=trainer.test_set, log=quiet)
    page = Page(write_report([tmp_path / "ft"], tmp_path / "page", tsne=False, log=quiet).read_text())
    assert page.sections == ["training", "accuracy", "finetune", "transfer", "geometry-scores", "loss", "knn", "schedule", "geometry",
                             "labels", "spectrum", "map", "environment"]
    evaluation = json.loads((tmp_path / "ft" / "eval.json").read_text())
    (entry,) = evaluation["finetune"]
    header, line = page.tables["finetune-table"]
    cells = dict(zip(header, line))
    assert (cells["labels"], cells["steps"]) == ("100%", "4")
    assert cells["pretrained"] == f"{100 * entry['pretrained'][0]:.2f}" and cells["from scratch"] == f"{100 * entry['scratch'][0]:.2f}"
    header, *body = page.tables["transfer-table"]
    section = evaluation["transfer"][0]
    assert [row[2] for row in body] == [row["name"] for row in section["rows"]] == ["raw pixels", "random convnet", "byol convnet"]
    for line, row in zip(body, section["rows"]):
        assert dict(zip(header, line))["linear top1"] == f"{100 * row['linear']['top1']:.2f}"


def test_the_geometry_and_training_tables_hold_the_runs_numbers(two_runs, report):
    _, page = report
    geometry = page.rows("geometry-table")
    training = {row[0]: dict(zip(page.tables["training-table"][0], row)) for row in page.tables["training-table"][1:]}
    for run_dir in two_runs:
        evaluation = json.loads((run_dir / "eval.json").read_text())
        projections = evaluation["projections"][-1]
        cells = geometry[(projections["name"], run_dir.name)]
        g = projections["geometry"]
        assert (cells["uniformity"], cells["RankMe"], cells["std"]) == (f"{g['uniformity']:.3f}", f"{g['rankme']:.1f}", f"{g['std']:.4f}")
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        last_window = [r for r in records if "loss" in r][-1]
        last_monitor = [r for r in records if "knn_top1_k5" in r][-1]
        assert training[run_dir.name]["final loss"] == f"{last_window['loss']:.4f}"
        assert training[run_dir.name]["last kNN (%)"] == f"{100 * last_monitor['knn_top1_k5']:.2f}"
        warnings = sum("warning" in r for r in records)  # these tiny encoders use about 2 of their 16 dimensions
        assert training[run_dir.name]["status"] == "evaluated" + (f"; {warnings} collapse warning(s)" if warnings else "")


def test_the_page_names_the_settings_that_differ_and_each_runs_environment(two_runs, report):
    _, page = report
    assert page.tables["settings-table"] == [["setting", "byol", "byol-unif"], ["final eval.label_draws", "3", "2"],
                                             ["final eval.label_fractions", "[]", "[0.25]"], ["final eval.shots", "[]", "[2]"],
                                             ["regularizers.uniformity", "0.0", "1.0"]]
    environment = json.loads((two_runs[0] / "environment.json").read_text())
    facts = {row[0]: row[1] for table in page.tables.values() for row in table if len(row) == 2}
    assert facts["git commit"] == environment["git"] and facts["torch"] == torch.__version__
    assert facts["CPU cores / torch threads"] == f"{environment['cpu_count']} / {environment['torch_threads']}"


def test_the_loss_plot_has_a_panel_for_each_term_of_either_run(two_runs):
    from nocollapse.report.plots import loss_figure

    runs = [load_run(path) for path in two_runs]
    assert runs[0].loss_terms() == ["loss", "byol"] and runs[1].loss_terms() == ["loss", "byol", "uniformity"]
    titles = [ax.get_title() for ax in loss_figure(runs).axes if ax.get_visible()]
    assert titles == ["total loss", "byol", "uniformity"]
    alone = [ax.get_title() for ax in loss_figure(runs[:1]).axes if ax.get_visible()]
    assert alone == ["total loss (= byol)"]  # BYOL's only term is its total: one panel, not two copies


@pytest.mark.parametrize("module, missing, kept", [
    ("matplotlib", "matplotlib is not installed", set()),
    ("sklearn", "scikit-learn is not installed", PLOTS),
])
def test_a_missing_extra_gives_a_message_and_a_page_without_its_plots(two_runs, tmp_path, monkeypatch, module, missing, kept):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if the package were not installed
    logged = []
    page = Page(write_report(two_runs, tmp_path, log=logged.append).read_text())
    assert page.sections == [name for name in FEW_LABEL_SECTIONS if kept or name != "labels"]
    assert {image["data-file"] for image in page.images} == kept
    assert any(missing in note and "pip install 'nocollapse[report]'" in note for note in page.notes)
    assert any(missing in line for line in logged)
    assert page.rows("accuracy-table")  # the tables do not need the extra
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(kept)


def test_a_run_that_is_training_or_was_killed_still_gets_a_page(tiny_data, tmp_path):
    config = resolve_config("fmnist", [*TINY_RUN, f"data.data_dir={tiny_data}", f"run.out_dir={tmp_path}", "run.device=cpu", "run.name=raw"])
    run_dir = Trainer(config, progress=False, log=quiet).fit()
    with open(run_dir / "metrics.jsonl", "a") as file:
        file.write('{"step": 8, "epoch": 2.0, "error": "the loss became non-finite"}\n')
        file.write('{"step": 9, "lo')  # a line cut short by a kill
    page = Page(write_report([run_dir], tmp_path / "page", log=quiet).read_text())
    assert page.sections == SECTIONS
    assert any("No run has been evaluated yet" in note for note in page.notes)
    assert any("1 unreadable line(s)" in note for note in page.notes)
    assert any("no test_embeddings.pt" in note for note in page.notes)
    assert {"loss.png", "knn.png", "geometry.png"} <= {image["data-file"] for image in page.images}
    warnings = sum("warning" in line for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    assert page.tables["training-table"][1][5] == "stopped: the loss became non-finite" + (f"; {warnings} collapse warning(s)" if warnings else "")


def test_report_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    with pytest.raises(UserError, match="is neither a run directory"):
        write_report([tmp_path], tmp_path / "out")
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "is neither a run directory" in err and "Traceback" not in err


def test_cli_report_writes_the_comparison(two_runs, tmp_path, capsys):
    assert main(["report", *map(str, two_runs), "--out", str(tmp_path), "--no-map", "--title", "two runs"]) == 0
    assert str(tmp_path / "index.html") in capsys.readouterr().out
    page = Page((tmp_path / "index.html").read_text())
    assert not list(tmp_path.glob("map-*.png"))
    assert any("maps were turned off" in note for note in page.notes)


def test_training_from_the_cli_writes_the_runs_report(tiny_data, tmp_path, capsys):
    args = ["train", "--quiet", "--data-dir", str(tiny_data), *TINY_RUN, "eval.linear_probe=false", f"run.out_dir={tmp_path}", "run.name=cli"]
    assert main(args) == 0
    page = Page((tmp_path / "cli" / "report" / "index.html").read_text())
    assert page.sections == SECTIONS and "map-1-cli.png" in {image["data-file"] for image in page.images}


def test_tensorboard_scalars_mirror_the_metrics_file(tiny_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = resolve_config("fmnist", [*TINY_RUN, f"data.data_dir={tiny_data}", f"run.out_dir={tmp_path}", "run.device=cpu", "run.name=tb",
                                       "run.tensorboard=true"])
    run_dir = Trainer(config, progress=False, log=quiet).fit()
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if "loss" in r]
    logged = events.Scalars("loss")
    assert [e.step for e in logged] == [r["step"] for r in windows]
    assert [e.value for e in logged] == pytest.approx([r["loss"] for r in windows], rel=1e-6)
    monitors = [r for r in records if "geometry" in r]
    rankme = events.Scalars("geometry/projections/rankme")
    assert [e.value for e in rankme] == pytest.approx([r["geometry"]["projections"]["rankme"] for r in monitors], rel=1e-6)
    assert {"lr", "tau", "img_per_s", "knn_top1_k5"} <= set(events.Tags()["scalars"])


def test_tensorboard_without_its_package_is_a_clear_error(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    config = resolve_config("fmnist", [*TINY_RUN, f"data.data_dir={tiny_data}", f"run.out_dir={tmp_path}", "run.device=cpu", "run.tensorboard=true"])
    with pytest.raises(UserError, match=r"pip install 'nocollapse\[tensorboard\]'"):
        Trainer(config, progress=False, log=quiet)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium is not installed (apt-get install chromium)")
def test_the_page_renders_in_headless_chromium(report, tmp_path):
    out, _ = report
    script = Path(__file__).parent.parent / "scripts" / "screenshot_report.py"
    shot = tmp_path / "shot.png"
    result = subprocess.run([sys.executable, str(script), str(out / "index.html"), "--out", str(shot)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    with Image.open(shot) as png:
        assert png.width >= 1200 and png.height >= 2000


def test_plots_adapt_to_what_a_run_logged(tmp_path):
    """A method without a target network has no τ panel; monitor lines without geometry give no geometry plot."""
    from nocollapse.report.plots import geometry_figure, knn_figure, schedule_figure
    from nocollapse.report.runs import RunRecord

    windows = [{"step": s, "epoch": s / 10, "loss": 1.0 / s, "wmse": 1.0 / s, "lr": 0.1, "img/s": 100.0} for s in range(1, 11)]
    monitors = [{"step": 10, "epoch": 1.0, "knn_top1_k20": 0.5, "knn_bank": 100}]
    run = RunRecord(path=tmp_path, label="wmse", config={"method": {"name": "wmse"}}, environment={}, windows=windows, monitors=monitors)
    assert [ax.get_title() for ax in schedule_figure([run]).axes] == ["learning rate"]
    assert geometry_figure([run]) is None
    assert knn_figure([run]).axes[0].get_lines()[0].get_ydata().tolist() == [50.0]


def test_baselines_merge_only_when_their_scores_agree(tmp_path):
    from nocollapse.report.html import _evaluation_rows
    from nocollapse.report.runs import RunRecord

    def run(label, raw_knn, euclid, dataset="fashion-mnist"):
        rows = [{"name": "raw pixels", "dim": 784, "knn": {"20": raw_knn}, "knn_euclidean": euclid, "linear": {}},
                {"name": "byol convnet", "dim": 256, "knn": {"20": 0.9}, "knn_euclidean": {}, "linear": {}}]
        return RunRecord(path=tmp_path, label=label, config={"data": {"dataset": dataset}}, environment={}, evaluation={"rows": rows})

    # An older run without the Euclidean kNN agrees with a newer one on what both measured: one row, all scores.
    rows = _evaluation_rows([run("old", 0.8447, {}), run("new", 0.8447, {"5": 0.8554}), run("other", 0.5, {})])
    baselines = [(row["knn_euclidean"], labels) for row, labels, _, is_baseline in rows if is_baseline]
    assert baselines == [({"5": 0.8554}, "old, new"), ({}, "other")]
    assert [labels for _, labels, _, is_baseline in rows if not is_baseline] == ["old", "new", "other"]


def test_report_files_get_the_permissions_of_ordinary_files(report):
    out, _ = report
    umask = os.umask(0)
    os.umask(umask)
    assert {(path.stat().st_mode & 0o777) for path in out.iterdir()} == {0o666 & ~umask}


def test_collapsed_or_broken_embeddings_give_a_note_instead_of_a_map(two_runs, tmp_path):
    run_dir = tmp_path / "collapsed"
    shutil.copytree(two_runs[0], run_dir)
    saved = torch.load(run_dir / "test_embeddings.pt", weights_only=True)
    saved["features"] = torch.ones_like(saved["features"])  # every embedding the same: t-SNE would crash the process
    torch.save(saved, run_dir / "test_embeddings.pt")
    page = Page(write_report([run_dir], tmp_path / "page", log=quiet).read_text())
    assert any("collapsed" in note for note in page.notes) and not list((tmp_path / "page").glob("map-*.png"))
    (run_dir / "test_embeddings.pt").write_bytes(b"not a tensor file")
    page = Page(write_report([run_dir], tmp_path / "page", log=quiet).read_text())
    assert any("is damaged" in note for note in page.notes)


def test_a_malformed_eval_json_is_a_clear_error(two_runs, tmp_path):
    run_dir = tmp_path / "bad"
    shutil.copytree(two_runs[0], run_dir)
    for content in ('{"rows": "x"}', '{"rows": [{"dim": 3}]}', '{"rows": [{"name": "a", "dim": 3, "geometry": {"dim": 3}}]}'):
        (run_dir / "eval.json").write_text(content)
        with pytest.raises(UserError, match="is not an evaluation nocollapse wrote"):
            write_report([run_dir], tmp_path / "page")


def test_the_same_run_twice_gets_two_labels_and_two_maps(two_runs, tmp_path):
    page = Page(write_report([two_runs[0], two_runs[0]], tmp_path, log=quiet).read_text())
    labels = [row[0] for row in page.tables["training-table"][1:]]
    assert len(set(labels)) == 2 and all(label.endswith(("byol #1", "byol #2")) for label in labels)
    assert len({image["data-file"] for image in page.images if image["data-file"].startswith("map-")}) == 2


def test_a_report_that_fails_costs_the_page_not_the_run(tiny_data, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("plotting exploded")

    monkeypatch.setattr("nocollapse.report.write_report", broken)
    args = ["train", "--quiet", "--data-dir", str(tiny_data), *TINY_RUN, "eval.linear_probe=false", f"run.out_dir={tmp_path}", "run.name=cli"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "report: not written (RuntimeError: plotting exploded); retry with `nocollapse report" in captured.err
    assert "run saved in" in captured.out and (tmp_path / "cli" / "eval.json").is_file()
