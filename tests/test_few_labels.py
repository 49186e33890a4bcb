"""Few-label evaluation: class-balanced draws that every representation shares, and their scores."""

import json

import numpy as np
import pytest
import torch

from conftest import TINY_RUN
from nocollapse.cli import main
from nocollapse.config import resolve_config
from nocollapse.errors import UserError
from nocollapse.eval.few_labels import LabelSubset, balanced_subset, draw_subsets, few_label_scores, label_subsets
from nocollapse.eval.knn import knn_accuracies
from nocollapse.eval.linear import linear_probe


def unbalanced_labels() -> torch.Tensor:
    """300 labels of 3 classes with 200, 70 and 30 members, shuffled."""
    labels = torch.cat([torch.zeros(200), torch.ones(70), torch.full((30,), 2)]).long()
    return labels[torch.randperm(300, generator=torch.Generator().manual_seed(1))]


def test_a_fraction_keeps_that_share_of_every_class_and_shots_a_count():
    labels = unbalanced_labels()
    for subset, expected in ((LabelSubset(fraction=0.1), [20, 7, 3]), (LabelSubset(fraction=0.01), [2, 1, 1]), (LabelSubset(shots=5), [5, 5, 5])):
        indices = balanced_subset(labels, 3, subset, torch.Generator().manual_seed(0))
        assert indices.tolist() == sorted(set(indices.tolist()))  # sorted and distinct
        assert np.bincount(labels[indices].numpy(), minlength=3).tolist() == expected


def test_the_names_of_subsets():
    assert [s.name for s in label_subsets((0.01, 0.1, 0.005), (1, 10))] == ["1%", "10%", "0.5%", "1-shot", "10-shot"]
    with pytest.raises(ValueError):
        LabelSubset(fraction=0.1, shots=2)


def test_draws_are_fixed_by_the_seed_alone_and_leave_the_global_rng_alone():
    labels = unbalanced_labels()
    one, ten = LabelSubset(fraction=0.1), LabelSubset(fraction=0.01)
    state = torch.random.get_rng_state()
    first = draw_subsets(labels, 3, [one, ten], draws=3, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(123)  # another global state changes nothing
    alone = draw_subsets(labels, 3, [one], draws=2, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(alone[one], first[one]))  # draw i does not depend on what else is drawn
    assert len({tuple(d.tolist()) for d in first[one]}) == 3  # the draws differ from each other
    other_seed = draw_subsets(labels, 3, [one], draws=1, seed=8)
    assert not torch.equal(other_seed[one][0], first[one][0])


def test_more_shots_than_a_class_has_is_a_clear_error():
    with pytest.raises(UserError, match=r"eval.shots=40: class 2 has only 30 .*at most 30 shots"):
        draw_subsets(unbalanced_labels(), 3, [LabelSubset(shots=40)], draws=1, seed=0)


def test_scores_on_the_whole_set_equal_the_full_evaluation_and_spreads_are_sample_std():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=generator) * 2
    train_labels, test_labels = torch.randint(0, 4, (400,), generator=generator), torch.randint(0, 4, (200,), generator=generator)
    train = centres[train_labels] + torch.randn(400, 16, generator=generator)
    test = centres[test_labels] + torch.randn(200, 16, generator=generator)
    everything = LabelSubset(fraction=1.0)
    draws = draw_subsets(train_labels, 4, [everything, LabelSubset(shots=3)], draws=3, seed=0)
    scores = few_label_scores(train, train_labels, test, test_labels, draws, num_classes=4, knn_k=(5, 20), probe_epochs=5, probe_min_steps=50)
    whole, shots = scores
    full_knn = knn_accuracies(train, train_labels, test, test_labels, num_classes=4, ks=(5, 20))
    full_linear = linear_probe(train, train_labels, test, test_labels, num_classes=4, epochs=5, min_steps=50)["top1"]
    assert whole.subset == "100%" and whole.labels == 400 and whole.draws == 3
    assert all(values == pytest.approx([full_knn[k]] * 3) for k, values in whole.knn.items())
    assert whole.linear == pytest.approx([full_linear] * 3)  # the rows come sorted, so the probe sees the same batches
    assert shots.labels == 12 and len(shots.linear) == 3
    summary = shots.summary()
    assert summary["kNN k=5"] == pytest.approx((np.mean(shots.knn[5]), np.std(shots.knn[5], ddof=1)))
    assert summary["linear"] == pytest.approx((np.mean(shots.linear), np.std(shots.linear, ddof=1)))
    # 12 labels of well-separated clusters: far above chance (25%), under the full set's accuracy.
    assert 0.5 < summary["linear"][0] <= full_linear + 0.05


def test_a_run_scores_every_row_on_the_same_draws_and_saves_them(tiny_data, tmp_path, capsys):
    args = ["train", "--quiet", "--no-report", "--data-dir", str(tiny_data), *TINY_RUN, f"run.out_dir={tmp_path}", "run.name=few",
            "eval.label_fractions=0.5", "eval.shots=1,3", "eval.label_draws=2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "with few training labels: mean ± std over 2 class-balanced draw(s) of run.seed=0" in out
    evaluation = json.loads((tmp_path / "few" / "eval.json").read_text())
    assert evaluation["labelled_train_images"] == 128
    for row in evaluation["rows"]:
        assert [s["subset"] for s in row["few_labels"]] == ["50%", "1-shot", "3-shot"]
        one_shot = row["few_labels"][1]
        assert one_shot["labels"] == 10 and one_shot["draws"] == 2 and len(one_shot["linear"]) == 2
        # One image per class: k=5 and k=20 both vote with all ten, so they agree.
        assert one_shot["knn"]["5"] == one_shot["knn"]["20"]
    # `nocollapse eval` rescoring the run with the same seed draws the same labels: the same figures.
    assert main(["eval", str(tmp_path / "few"), "eval.label_fractions=0.5", "eval.shots=1,3", "eval.label_draws=2", "--no-report"]) == 0
    again = json.loads((tmp_path / "few" / "eval.json").read_text())
    scores = lambda e: [[{k: v for k, v in s.items() if k != "seconds"} for s in row["few_labels"]] for row in e["rows"]]
    assert scores(again) == scores(evaluation)


@pytest.mark.parametrize("override, message", [
    ("eval.label_fractions=0", "eval.label_fractions"),
    ("eval.label_fractions=1", "eval.label_fractions"),
    ("eval.shots=0", "eval.shots"),
    ("eval.label_draws=0", "eval.label_draws"),
])
def test_bad_few_label_settings_are_refused(override, message):
    with pytest.raises(UserError, match=message):
        resolve_config("fmnist", [override])


def test_a_fraction_skips_a_class_without_images_and_too_many_shots_stop_the_run_before_it_trains(tiny_data, tmp_path, capsys):
    labels = torch.tensor([0] * 50 + [2] * 50)
    indices = balanced_subset(labels, 3, LabelSubset(fraction=0.1), torch.Generator().manual_seed(0))
    assert np.bincount(labels[indices].numpy(), minlength=3).tolist() == [5, 0, 5]
    args = ["train", "--quiet", "--data-dir", str(tiny_data), *TINY_RUN, f"run.out_dir={tmp_path}", "run.name=s", "eval.shots=1000"]
    assert main(args) == 2
    assert "eval.shots=1000: class 0 has only" in capsys.readouterr().err
    assert not (tmp_path / "s" / "checkpoint.pt").exists()
