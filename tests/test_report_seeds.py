"""Statistics over seeds in reports: grouping by setting, mean ± std against numpy, Welch's t-test against its formula,
the best and the ties marked by the test, curves as mean and band, and a sweep's directory reported as one page."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from conftest import TINY_RUN
from nocollapse.cli import main
from nocollapse.config import resolve_config
from nocollapse.report import write_report
from nocollapse.report.plots import seed_band_figure
from nocollapse.report.runs import RunRecord, expand_run_dirs
from nocollapse.report.seeds import format_cell, group_by_seed, markdown_table, seed_scores, welch_p_value
from nocollapse.train.evaluation import evaluate_run
from nocollapse.train.loop import Trainer

from test_report import Page

quiet = lambda *_: None


def fake_run(tmp_path, label, seed, knn, *, lr=1.0, rankme=50.0, losses=(1.0, 0.5)):
    """A run record of config ``lr`` and ``seed`` whose trained encoder scored ``knn`` (k=20) and ``rankme``."""
    config = resolve_config("fmnist-byol", [f"optim.lr={lr}", f"run.seed={seed}"]).to_dict()
    rows = [{"name": "raw pixels", "dim": 784, "knn": {"20": 0.8447}, "knn_euclidean": {}, "linear": {}},
            {"name": "byol convnet", "dim": 256, "knn": {"20": knn}, "knn_euclidean": {}, "linear": {"top1": knn + 0.01},
             "geometry": {"dim": 256, "alignment": 0.1, "uniformity": -1.0, "rankme": rankme, "separability": 1.5, "std": 0.02}}]
    windows = [{"step": i, "epoch": i / 2, "loss": loss} for i, loss in enumerate(losses, start=1)]
    monitors = [{"step": 2, "epoch": 1.0, "knn_top1_k20": knn - 0.01}]
    return RunRecord(path=tmp_path / label, label=label, config=config, environment={}, windows=windows, monitors=monitors,
                     evaluation={"rows": rows, "projections": []})


def test_welch_p_value_matches_its_formula():
    a, b = [0.901, 0.905, 0.899], [0.880, 0.890, 0.884, 0.887]
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch–Satterthwaite
    assert welch_p_value(a, b) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)
    assert welch_p_value(a, [0.9]) is None  # one seed: no spread to test against
    assert welch_p_value([0.5, 0.5], [0.5, 0.5]) == 1.0 and welch_p_value([0.5, 0.5], [0.6, 0.6]) == 0.0


def test_runs_differing_only_by_seed_form_one_setting(tmp_path):
    runs = [fake_run(tmp_path, f"a-seed{s}", s, 0.9) for s in (0, 1, 2)] + [fake_run(tmp_path, f"b-seed{s}", s, 0.8, lr=0.5) for s in (0, 1)]
    runs.append(fake_run(tmp_path, "lonely", 0, 0.7, lr=0.25))
    runs.append(fake_run(tmp_path, "a-seed1-again", 1, 0.9))  # a rerun of a seed is not another seed
    groups = group_by_seed(runs)
    assert [(group.label, group.seeds) for group in groups] == [("a", [0, 1, 2]), ("b", [0, 1]), ("lonely", [0]), ("a-seed1-again", [1])]


def test_each_setting_gets_mean_and_std_and_only_a_spread_exceeding_difference_is_marked(tmp_path):
    best = [0.900, 0.905, 0.910]
    tied = [0.902, 0.885, 0.920]  # its mean is lower, but well inside the seeds' spread
    worse = [0.850, 0.852, 0.848]
    runs = [fake_run(tmp_path, f"{name}-seed{s}", s, value, lr=lr) for name, values, lr in (("best", best, 1.0), ("tied", tied, 0.5), ("worse", worse, 0.25))
            for s, value in enumerate(values)]
    runs.append(fake_run(tmp_path, "single-seed0", 0, 0.95, lr=0.1))  # the highest mean, but of one seed
    scores = seed_scores(group_by_seed(runs[:-1]))
    knn = [measure.name for measure in scores.measures].index("kNN k=20")
    cells = [row[knn] for row in scores.cells]
    assert [c.mean for c in cells] == pytest.approx([np.mean(best), np.mean(tied), np.mean(worse)])
    assert [c.std for c in cells] == pytest.approx([np.std(v, ddof=1) for v in (best, tied, worse)])
    assert [(c.best, c.tied) for c in cells] == [(True, False), (False, True), (False, False)]
    assert cells[1].p_value == pytest.approx(stats.ttest_ind(tied, best, equal_var=False).pvalue)
    assert cells[2].p_value < 0.05
    assert format_cell(cells[0], scores.measures[knn]) == f"{100 * np.mean(best):.2f} ± {100 * np.std(best, ddof=1):.2f}"
    table = markdown_table(scores).splitlines()
    assert table[2].startswith("| best | 3 | **90.50 ± 0.50** |") and table[4].startswith("| worse | 3 | 85.00 ± 0.20 |")
    assert "Welch's two-sided t-test" in markdown_table(scores)

    # A single run is not tested and cannot anchor the test: the best stays the best of the settings with seeds.
    cells = [row[knn] for row in seed_scores(group_by_seed(runs)).cells]
    assert [(c.best, c.tied) for c in cells] == [(True, False), (False, True), (False, False), (False, False)]
    assert cells[-1].p_value is None


def test_curves_over_seeds_are_drawn_as_mean_and_band(tmp_path):
    runs = [fake_run(tmp_path, f"a-seed{s}", s, 0.9, losses=(1.0 + s, 0.5 + s)) for s in (0, 1, 2)]
    runs.append(fake_run(tmp_path, "b-seed0", 0, 0.8, lr=0.5))
    figure = seed_band_figure(runs)
    knn_ax, loss_ax = figure.axes[:2]
    assert [line.get_label() for line in loss_ax.get_lines()] == ["a (n=3)"]  # one seed is no band
    assert loss_ax.get_lines()[0].get_ydata().tolist() == pytest.approx([2.0, 1.5])
    band = loss_ax.collections[0].get_paths()[0].vertices[:, 1]
    assert min(band) == pytest.approx(1.5 - 1.0) and max(band) == pytest.approx(2.0 + 1.0)  # ± the std of (0.5, 1.5, 2.5): 1
    assert seed_band_figure(runs[-1:]) is None


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """Two settings × two seeds of the tiny run, trained as a sweep would lay them out, with a sweep.json order."""
    from conftest import write_tiny_fashion_mnist

    root = tmp_path_factory.mktemp("seeds")
    data = write_tiny_fashion_mnist(root / "data")
    out = root / "sweep"
    names = []
    for weight in (0, 1):
        for seed in (0, 1):
            name = f"u{weight}-seed{seed}"
            config = resolve_config("fmnist", [*TINY_RUN, f"data.data_dir={data}", f"run.out_dir={out}", "run.device=cpu", f"run.name={name}",
                                               f"regularizers.uniformity={weight}", f"run.seed={seed}"])
            trainer = Trainer(config, progress=False, log=quiet)
            evaluate_run(trainer.fit(), config, train_set=trainer.train_set, test_set=trainer.test_set, log=quiet)
            names.append(name)
    (out / "sweep.json").write_text(json.dumps({"runs": [{"name": name} for name in reversed(names)]}))
    return out, names


def test_a_sweep_directory_is_reported_as_its_runs_grouped_by_setting(sweep_dir, tmp_path, capsys):
    out, names = sweep_dir
    assert [path.name for path in expand_run_dirs([out])] == list(reversed(names))  # the sweep's order
    assert main(["report", str(out), "--out", str(tmp_path / "page")]) == 0
    printed = capsys.readouterr().out
    assert "| u1 | 2 |" in printed and "| u0 | 2 |" in printed
    page = Page((tmp_path / "page" / "index.html").read_text())
    assert "seeds" in page.sections and "seeds.png" in {image["data-file"] for image in page.images}
    header, *rows = page.tables["seeds-table"]
    assert [row[:3] for row in rows] == [["u1", "2", "1,0"], ["u0", "2", "1,0"]]
    evaluations = {name: json.loads((out / name / "eval.json").read_text())["rows"][-1] for name in names}
    knn = [100 * evaluations[f"u1-seed{s}"]["knn"]["20"] for s in (0, 1)]
    assert rows[0][header.index("kNN k=20")] == f"{np.mean(knn):.2f} ± {np.std(knn, ddof=1):.2f}"
    assert (tmp_path / "page" / "seeds.md").read_text() in printed
    assert len([image for image in page.images if image["data-file"].startswith("map-")]) == 2  # one map per setting
    settings = page.tables["settings-table"]
    assert settings[0] == ["setting", "u1", "u0"] and settings[1] == ["run.seed", "1,0", "1,0"]
    assert ["regularizers.uniformity", "1.0", "0.0"] in settings


def test_a_directory_without_runs_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "page")]) == 2
    assert "neither a run directory (no config.json) nor a directory of runs" in capsys.readouterr().err


def test_runs_without_seeds_in_common_get_no_seed_section(sweep_dir, tmp_path):
    out, names = sweep_dir
    page = Page(write_report([out / names[0], out / names[2]], tmp_path / "page", tsne=False, log=quiet).read_text())
    assert "seeds" not in page.sections and not (tmp_path / "page" / "seeds.md").exists()


def test_without_scipy_the_table_has_its_means_and_says_why_nothing_is_tested(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "scipy", None)
    runs = [fake_run(tmp_path, f"{name}-seed{s}", s, value + 0.01 * s, lr=lr) for name, value, lr in (("a", 0.9, 1.0), ("b", 0.8, 0.5)) for s in (0, 1)]
    scores = seed_scores(group_by_seed(runs))
    assert "scipy is not installed" in scores.untested and "pip install 'nocollapse[report]'" in markdown_table(scores)
    assert [row[0].best for row in scores.cells] == [True, False] and scores.cells[1][0].p_value is None


def test_a_re_evaluation_groups_by_the_settings_its_figures_came_from(tmp_path):
    def run(label, seed, trained, evaluated=None, extra=None):
        config = resolve_config("fmnist-byol", [f"run.seed={seed}", *trained]).to_dict()
        evaluation = {"rows": [], "projections": []}
        if evaluated is not None:  # what `nocollapse eval RUN eval.KEY=VALUE` records; older versions recorded nothing
            evaluation["eval_config"] = resolve_config("fmnist-byol", [f"run.seed={seed}", *evaluated]).to_dict()["eval"] | (extra or {})
        return RunRecord(path=tmp_path / label, label=label, config=config, environment={}, evaluation=evaluation)

    fractions = run("fractions-seed0", 0, ["eval.label_fractions=0.01"])
    re_evaluated = run("fractions-seed1", 1, [], ["eval.label_fractions=0.01"], extra={"a_later_setting": 1})  # unknown keys ignored
    assert re_evaluated.final_eval["label_fractions"] == (0.01,) and "a_later_setting" not in re_evaluated.final_eval
    assert "monitor_every" not in re_evaluated.final_eval  # the training-time settings are the training's, not the evaluation's
    old = run("fractions-seed2", 2, ["eval.label_fractions=0.01"])  # an eval.json without eval_config: config.json's settings
    assert old.final_eval == fractions.final_eval
    # k shapes the epoch monitor too: trained with k = 5, 20 and re-evaluated at k = 3 is not a run trained at k = 3.
    monitored_at_5 = run("k-seed0", 0, ["eval.knn_k=5,20"], ["eval.knn_k=3"])
    monitored_at_3 = run("k-seed1", 1, ["eval.knn_k=3"])
    damaged = run("damaged-seed0", 0, [], [], extra={"knn_k": "many"})  # a record that does not parse: config.json's settings
    assert damaged.final_eval == fractions.final_eval | {"label_fractions": ()}
    groups = group_by_seed([fractions, re_evaluated, old, monitored_at_5, monitored_at_3])
    assert [(group.label, group.seeds) for group in groups] == [("fractions", [0, 1, 2]), ("k-seed0", [0]), ("k-seed1", [1])]
    # The report's table of what differs names the evaluation setting that splits the groups, not config.json's.
    from nocollapse.report.html import differing_settings
    table = differing_settings([fractions, re_evaluated, run("plain-seed0", 0, [])])
    assert "final eval.label_fractions" in table and "<td>eval.label_fractions" not in table
