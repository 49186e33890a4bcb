"""Geometry of representations (nocollapse.eval.geometry): each metric against its definition or a naive
reference, the collapse cases it must show, and its place in the evaluation and the training monitor."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import TINY_RUN, write_tiny_fashion_mnist
from nocollapse.augment import AugmentConfig
from nocollapse.config import resolve_config
from nocollapse.eval import (
    GeometryScores,
    class_separability,
    embedding_std,
    encoder_features,
    format_geometry_table,
    geometry_scores,
    knn_accuracy,
    positive_views,
    rankme,
    score_features,
    singular_spectrum,
    view_features,
)
from nocollapse.errors import UserError
from nocollapse.eval.geometry import SUBSET_SEED
from nocollapse.losses import uniformity_loss
from nocollapse.methods import build_method
from nocollapse.nn.convnet import ConvNet
from nocollapse.train.evaluation import evaluate_run
from nocollapse.train.checkpoint import load_checkpoint
from nocollapse.train.loop import Trainer
from nocollapse.train.run_data import bank_rows


def naive_separability(features, labels):
    """Mean inter- over mean intra-class cosine distance, one ordered pair at a time, float64."""
    z = [x / x.norm() if x.norm() > 0 else x for x in features.double()]
    inter, intra = [], []
    for i in range(len(z)):
        for j in range(len(z)):
            if i == j:
                continue
            distance = 1 - float(z[i] @ z[j])
            (intra if labels[i] == labels[j] else inter).append(distance)
    return (sum(inter) / len(inter)) / (sum(intra) / len(intra))


def clusters(seed, n_per_class=40, classes=4, dim=16, spread=0.2):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=g), labels


# ----------------------------------------------------------------------------------------------------
# The metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_separability_matches_the_naive_pairwise_reference(seed):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(50, 6, generator=g) + torch.randn(6, generator=g)  # off-centre: cosines are not all ≈ 0
    labels = torch.randint(0, 4, (50,), generator=g) * 7 - 3  # any integer values name the classes
    features[5] = 0  # a zero row has cosine 0 with everything
    assert class_separability(features, labels) == pytest.approx(naive_separability(features, labels), rel=1e-10)
    assert class_separability(features.float(), labels) == pytest.approx(naive_separability(features, labels), rel=1e-5)


def test_separability_is_high_for_separated_classes_and_about_one_for_mixed_labels():
    features, labels = clusters(3)
    separated = class_separability(features, labels)
    mixed = class_separability(features, labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))])
    assert separated > 5
    assert mixed == pytest.approx(1, abs=0.1)
    # Each class one point: intra-class distance 0, perfectly separated; everything one point: no structure.
    assert class_separability(torch.eye(4)[labels % 4], labels) == math.inf
    assert class_separability(torch.ones(8, 3), torch.arange(8) % 2) == 1.0


def test_separability_refuses_labels_it_cannot_score():
    features = torch.randn(6, 3)
    with pytest.raises(ValueError, match="two classes"):
        class_separability(features, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="two classes"):
        class_separability(features, torch.arange(6))  # no class with two rows
    with pytest.raises(ValueError, match="integer labels"):
        class_separability(features, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer labels"):
        class_separability(features, torch.zeros(6))
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        class_separability(features.reshape(2, 3, 3), torch.zeros(2, dtype=torch.long))


def test_embedding_std_is_zero_when_collapsed_and_one_over_root_d_when_spread():
    direction = torch.randn(1, 32)
    collapsed = direction * torch.rand(100, 1).add(0.5)  # one direction at many lengths: normalised, one point
    assert embedding_std(collapsed) == pytest.approx(0, abs=1e-6)  # float32 rounding of the scaled copies
    spread = torch.randn(20_000, 64, generator=torch.Generator().manual_seed(0))
    assert embedding_std(spread) == pytest.approx(1 / math.sqrt(64), rel=0.02)
    with pytest.raises(ValueError, match="N >= 2"):
        embedding_std(torch.randn(1, 4))


def test_geometry_scores_on_identical_views_uniform_points_and_collapse():
    g = torch.Generator().manual_seed(1)
    spread = torch.randn(2000, 256, generator=g)
    labels = torch.randint(0, 10, (2000,), generator=g)
    scores = geometry_scores(spread, labels, views=torch.stack([spread[:300], spread[:300]]))
    assert scores.alignment == pytest.approx(0, abs=1e-6)
    # Uniform on a high-dimensional sphere: log E exp(−4 + 4 cos) = −4 + 8/d for cos ~ N(0, 1/d).
    assert scores.uniformity == pytest.approx(-4 + 8 / 256, abs=0.02)
    assert scores.rankme == pytest.approx(rankme(spread))
    assert scores.spectrum == pytest.approx(singular_spectrum(spread).tolist())
    assert scores.dim == 256 and scores.std == pytest.approx(embedding_std(spread))
    assert scores.separability == pytest.approx(class_separability(spread, labels))

    collapsed = geometry_scores(torch.ones(50, 8), torch.arange(50) % 5)
    assert collapsed.uniformity == pytest.approx(0, abs=1e-6) and collapsed.std == pytest.approx(0, abs=1e-12)
    assert collapsed.alignment is None and collapsed.rankme == pytest.approx(1, abs=1e-3)


def test_uniformity_is_scored_on_a_fixed_subset():
    features, labels = clusters(4, n_per_class=50)
    whole = geometry_scores(features, labels, uniformity_samples=len(features))
    assert whole.uniformity == pytest.approx(float(uniformity_loss(features)))
    subset = torch.randperm(len(features), generator=torch.Generator().manual_seed(SUBSET_SEED))[:64]
    part = geometry_scores(features, labels, uniformity_samples=64)
    assert part.uniformity == pytest.approx(float(uniformity_loss(features[subset])))
    assert geometry_scores(features, labels, uniformity_samples=64) == part  # the same subset every time
    assert part.rankme == whole.rankme  # only uniformity is subsampled


def test_geometry_scores_input_errors():
    features, labels = clusters(5)
    with pytest.raises(ValueError, match="views must be"):
        geometry_scores(features, labels, views=torch.randn(2, 10, 3))
    with pytest.raises(ValueError, match="M >= 2"):
        geometry_scores(features, labels, views=features[None])
    with pytest.raises(ValueError, match="uniformity_samples"):
        geometry_scores(features, labels, uniformity_samples=1)


def test_scores_serialise_and_print_as_the_geometry_table():
    features, labels = clusters(6)
    scores = geometry_scores(features, labels, views=torch.stack([features, features + 0.1]))
    saved = json.loads(json.dumps(scores.to_dict()))
    assert GeometryScores(**saved) == scores
    assert "spectrum" not in scores.to_dict(spectrum=False)
    table = format_geometry_table([("mine", scores), ("other", geometry_scores(features, labels))], title="geometry")
    lines = table.splitlines()
    assert lines[0] == "geometry"
    assert lines[1].split() == ["representation", "dim", "alignment", "uniformity", "RankMe", "separability", "std"]
    assert lines[3].split() == ["mine", "16", f"{scores.alignment:.3f}", f"{scores.uniformity:.3f}", f"{scores.rankme:.1f}",
                                f"{scores.separability:.3f}", f"{scores.std:.4f}"]
    assert lines[4].split()[2] == "-"  # no views, no alignment
    row = score_features("x", features, labels, features, labels, num_classes=4, knn_k=(5,), probe=False, test_views=torch.stack([features, features]))
    assert row.geometry.alignment == pytest.approx(0, abs=1e-6)
    assert row.to_dict()["geometry"] == row.geometry.to_dict()


# ----------------------------------------------------------------------------------------------------
# Positive views and the features of networks on them


def test_positive_views_are_reproducible_unstandardised_views_of_a_subset():
    images = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    augment = AugmentConfig(num_views=3, mean=(0.5,), std=(0.25,))
    views = positive_views(images, augment, count=16)
    assert views.shape == (3, 16, 1, 28, 28) and 0 <= views.min() and views.max() <= 1
    assert torch.equal(views, positive_views(images, augment, count=16))
    assert not torch.equal(views, positive_views(images, augment, count=16, seed=1))
    assert positive_views(images, augment, count=100).shape[1] == 40


def test_view_features_are_the_encoder_features_of_each_view():
    torch.manual_seed(0)
    encoder = ConvNet(1, (8, 16))
    images = torch.randint(0, 256, (2, 12, 1, 28, 28), dtype=torch.uint8)
    settings = {"mean": (0.3,), "std": (0.2,)}
    got = view_features(encoder, images.float() / 255, batch_size=5, **settings)
    want = torch.stack([encoder_features(encoder, view, **settings) for view in images])
    assert got.shape == (2, 12, encoder.output_dim)
    torch.testing.assert_close(got, want)
    assert encoder.training, "the train mode is restored"


@pytest.mark.parametrize("preset", ["fmnist", "fmnist-msbreg", "fmnist-wmse2"])
def test_embed_gives_the_online_projections_the_loss_sees(preset):
    config = resolve_config(preset, [*TINY_RUN, "model.projection_dim=8", "method.wmse.w_size=16"])
    torch.manual_seed(0)
    method = build_method(config, in_channels=1).eval()  # eval: BatchNorm treats each sample alone, so batches compare
    images = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        embedded = method.embed(images)
        _, projections = method.objective(torch.stack([images, images.flip(0)]))
    assert embedded.shape == (16, 8)
    torch.testing.assert_close(embedded, projections[0])
    torch.testing.assert_close(embedded.flip(0), projections[1])


# ----------------------------------------------------------------------------------------------------
# In the evaluation and the training monitor


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One trained tiny BYOL run, shared by the tests below (each only reads it or evaluates it again)."""
    root = tmp_path_factory.mktemp("geometry")
    data = write_tiny_fashion_mnist(root / "data")
    config = resolve_config("fmnist", [*TINY_RUN, f"data.data_dir={data}", f"run.out_dir={root}", "run.name=run", "run.device=cpu"])
    trainer = Trainer(config, progress=False, log=lambda *_: None)
    trainer.fit()
    return trainer


def test_the_monitor_logs_the_geometry_of_features_and_projections(tiny_run):
    records = [json.loads(line) for line in (tiny_run.run_dir / "metrics.jsonl").read_text().splitlines()]
    monitored = [r for r in records if "knn_top1_k5" in r]
    assert len(monitored) == 2
    for record in monitored:
        geometry = record["geometry"]
        assert set(geometry) == {"features", "projections"}
        assert geometry["features"]["dim"] == tiny_run.method.encoder.output_dim and geometry["projections"]["dim"] == 16
        for scores in geometry.values():
            assert set(scores) == {"dim", "alignment", "uniformity", "rankme", "separability", "std"}
            assert 0 <= scores["alignment"] <= 4 and -4 <= scores["uniformity"] <= 0 and 1 <= scores["rankme"] <= scores["dim"]

    # Monitoring draws nothing from the global RNG (training's), and leaves the method in train mode.
    lines = []
    tiny_run.log = lines.append
    state = torch.get_rng_state()
    tiny_run._monitor()
    assert torch.equal(torch.get_rng_state(), state)
    assert all(module.training for module in tiny_run.method.modules())
    assert len(lines) == 2 and "projections align" in lines[1]
    last = json.loads((tiny_run.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["geometry"] == monitored[-1]["geometry"], "the same weights give the same numbers"


def test_the_monitor_gives_the_figures_of_a_separate_pass_for_each_network(tiny_run):
    """One encoder pass and kept views (the monitor) against what it logged before them: the projections from their own pass
    through the whole method (``embed``), the views drawn afresh, each through the encoder and through the method."""
    tiny_run.log = lambda *_: None
    tiny_run._monitor()
    logged = json.loads((tiny_run.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    method, config, test = tiny_run.method, tiny_run.config, tiny_run.test_set
    settings = {"mean": config.augment.mean, "std": config.augment.std, "channels_last": config.run.channels_last, "amp": tiny_run.bf16}
    views = positive_views(test.images, config.augment)
    separate = {
        "features": geometry_scores(encoder_features(method.encoder, test.images, **settings), test.labels,
                                    views=view_features(method.encoder, views, **settings)),
        "projections": geometry_scores(encoder_features(method, test.images, forward=method.embed, **settings), test.labels,
                                       views=view_features(method, views, forward=method.embed, **settings)),
    }
    for name, scores in separate.items():
        expected = scores.to_dict(spectrum=False)
        assert logged["geometry"][name] == pytest.approx(expected, rel=1e-4), name


def test_eval_prints_the_geometry_table_and_saves_it_with_the_projections(tiny_run):
    lines = []
    rows = evaluate_run(tiny_run.run_dir, tiny_run.config, train_set=tiny_run.train_set, test_set=tiny_run.test_set, log=lines.append)
    out = "\n".join(lines)
    accuracy_table, geometry_table = out.split("top-1 accuracy (%)")[1].split("fashion-mnist test split, geometry of their embeddings")
    assert "RankMe" not in accuracy_table
    names = ["raw pixels", "random convnet", "byol convnet", "random byol projections", "byol projections"]
    assert all(name in geometry_table for name in names)
    assert "alignment" in geometry_table and "separability" in geometry_table

    saved = json.loads((tiny_run.run_dir / "eval.json").read_text())
    assert [row["name"] for row in saved["rows"]] == names[:3] == [row.name for row in rows]
    assert [row["name"] for row in saved["projections"]] == names[3:]
    for row in saved["rows"] + saved["projections"]:
        geometry = row["geometry"]
        assert geometry["dim"] == row["dim"] and len(geometry["spectrum"]) == min(len(tiny_run.test_set), row["dim"])
        assert geometry["alignment"] is not None
    assert saved["rows"][0]["dim"] == 28 * 28
    # The random-init projections are the method training started from: the same seed builds the same weights.
    torch.manual_seed(tiny_run.config.run.seed)
    initial = build_method(tiny_run.config, in_channels=1)
    augment = tiny_run.config.augment
    projections = encoder_features(initial, tiny_run.test_set.images, mean=augment.mean, std=augment.std, forward=initial.embed)
    assert saved["projections"][0]["geometry"]["rankme"] == pytest.approx(rankme(projections))


def test_the_trained_projections_from_the_scored_features_equal_a_pass_through_the_checkpoint(tiny_run, tmp_path, monkeypatch):
    """The evaluation projects the features it scored through the checkpoint's head; a separate pass of the checkpoint's whole
    method (``embed``) must give the same geometry, and so must a run whose encoder.pt is no longer the checkpoint's encoder."""
    import nocollapse.train.evaluation as evaluation

    passes = []
    for name in ("encoder_features", "view_features"):
        real = getattr(evaluation, name)
        monkeypatch.setattr(evaluation, name, lambda network, *args, _real=real, **kwargs: passes.append(network) or _real(network, *args, **kwargs))
    config, test = tiny_run.config, tiny_run.test_set
    method = build_method(config, in_channels=1)
    method.load_state_dict(load_checkpoint(tiny_run.run_dir / "checkpoint.pt")["method"])
    settings = {"mean": config.augment.mean, "std": config.augment.std}
    views = positive_views(test.images, config.augment)
    separate = geometry_scores(encoder_features(method, test.images, forward=method.embed, **settings), test.labels,
                               views=view_features(method, views, forward=method.embed, **settings)).to_dict(spectrum=False)
    quick = ["eval.baselines=false", "eval.linear_probe=false"]
    run_dir = tmp_path / "copy"
    run_dir.mkdir()
    for name in ("config.json", "encoder.pt", "checkpoint.pt"):
        (run_dir / name).write_bytes((tiny_run.run_dir / name).read_bytes())
    passes.clear()
    evaluate_run(run_dir, resolve_config("fmnist", [*TINY_RUN, *quick, "run.device=cpu"]), train_set=tiny_run.train_set, test_set=test,
                 log=lambda *_: None)
    assert len(passes) == 3  # the test images, their views, the training images: one pass each, through encoder.pt only
    without_spectrum = lambda geometry: {key: value for key, value in geometry.items() if key != "spectrum"}  # noqa: E731
    first = json.loads((run_dir / "eval.json").read_text())
    assert without_spectrum(first["projections"][0]["geometry"]) == pytest.approx(separate, rel=1e-4)

    replaced = {key: value + 0.5 if value.is_floating_point() else value for key, value in method.encoder.state_dict().items()}
    torch.save(replaced, run_dir / "encoder.pt")
    passes.clear()
    evaluate_run(run_dir, resolve_config("fmnist", [*TINY_RUN, *quick, "run.device=cpu"]), train_set=tiny_run.train_set, test_set=test,
                 log=lambda *_: None)
    saved = json.loads((run_dir / "eval.json").read_text())
    assert len(passes) == 5  # and the checkpoint's own encoder, for the projections
    assert without_spectrum(saved["projections"][0]["geometry"]) == pytest.approx(separate, rel=1e-4)
    assert saved["rows"][0]["geometry"]["rankme"] != pytest.approx(first["rows"][0]["geometry"]["rankme"])  # the replaced file was scored


def test_eval_train_samples_fits_on_the_seeds_fixed_subset_of_the_training_images(tiny_run, tmp_path):
    config, train, test = tiny_run.config, tiny_run.train_set, tiny_run.test_set
    run_dir = tmp_path / "copy"
    run_dir.mkdir()
    for name in ("config.json", "encoder.pt"):
        (run_dir / name).write_bytes((tiny_run.run_dir / name).read_bytes())
    lines = []
    evaluate_run(run_dir, resolve_config("fmnist", [*TINY_RUN, "run.device=cpu", "eval.baselines=false", "eval.train_samples=40"]),
                 train_set=train, test_set=test, log=lines.append)
    assert "fitting on 40 of the 128 training images (eval.train_samples)" in "\n".join(lines)
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["labelled_train_images"] == 40
    rows = bank_rows(len(train), 40, config.run.seed)
    assert len(set(rows.tolist())) == 40
    settings = {"mean": config.augment.mean, "std": config.augment.std}
    encoder = tiny_run.method.encoder
    bank, queries = encoder_features(encoder, train.images[rows], **settings), encoder_features(encoder, test.images, **settings)
    expected = knn_accuracy(bank, train.labels[rows], queries, test.labels, num_classes=10, k=5, temperature=config.eval.knn_temperature)
    assert saved["rows"][0]["knn"]["5"] == pytest.approx(expected)
    assert not torch.equal(bank_rows(len(train), 40, config.run.seed + 1), rows)  # another seed, other images


def test_shots_beyond_the_eval_train_samples_are_refused_before_training(tiny_run):
    config = resolve_config("fmnist", [*TINY_RUN, f"data.data_dir={tiny_run.config.data.data_dir}", "run.device=cpu", "eval.shots=2",
                                       "eval.train_samples=8", f"run.out_dir={tiny_run.run_dir.parent}", "run.name=refused"])
    with pytest.raises(UserError, match=r"eval.shots=2: class \d+ has only [01] labelled training image.*of the eval.train_samples=8 images"):
        Trainer(config, progress=False, log=lambda *_: None)
    assert not (tiny_run.run_dir.parent / "refused" / "checkpoint.pt").exists()


def test_eval_without_the_checkpoint_skips_the_trained_projections(tiny_run, tmp_path):
    run_dir = tmp_path / "copy"
    run_dir.mkdir()
    for name in ("config.json", "encoder.pt"):
        (run_dir / name).write_bytes((tiny_run.run_dir / name).read_bytes())
    config = resolve_config("fmnist", [*TINY_RUN, f"data.data_dir={tiny_run.config.data.data_dir}", "run.device=cpu",
                                       "eval.baselines=false", "eval.linear_probe=false"])
    lines = []
    evaluate_run(run_dir, config, train_set=tiny_run.train_set, test_set=tiny_run.test_set, log=lines.append)
    assert any("no checkpoint.pt" in line for line in lines)
    saved = json.loads((run_dir / "eval.json").read_text())
    assert [row["name"] for row in saved["rows"]] == ["byol convnet"] and saved["projections"] == []
