"""Transfer: other datasets' images converted to the encoder's input, and scored beside their own baselines."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_RUN, write_labelled_folder, write_random_photos
from nocollapse.cli import main
from nocollapse.config import resolve_config
from nocollapse.errors import UserError
from nocollapse.eval.transfer import TransferTarget, describe_conversion, to_encoder_input


def random_images(count: int, channels: int, side: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (count, channels, side, side), dtype=np.uint8))


def test_rgb_becomes_pillows_luminance_and_the_resize_matches_pillows_antialiased_bilinear():
    images = random_images(4, 3, 32)
    grey = to_encoder_input(images, channels=1, size=32)
    for image, converted in zip(images, grey):
        reference = np.asarray(Image.fromarray(image.permute(1, 2, 0).numpy()).convert("L"))
        assert np.abs(converted[0].numpy().astype(int) - reference.astype(int)).max() <= 1
    small = to_encoder_input(grey, channels=1, size=28)
    for image, resized in zip(grey, small):
        reference = np.asarray(Image.fromarray(image[0].numpy()).resize((28, 28), Image.BILINEAR))
        assert np.abs(resized[0].numpy().astype(int) - reference.astype(int)).max() <= 1


def test_grey_is_repeated_into_rgb_and_what_fits_is_left_as_it_is():
    images = random_images(3, 1, 28)
    rgb = to_encoder_input(images, channels=3, size=28)
    assert rgb.shape == (3, 3, 28, 28) and all(torch.equal(rgb[:, c], images[:, 0]) for c in range(3))
    assert to_encoder_input(images, channels=1, size=28) is images
    with pytest.raises(UserError, match="4-channel"):
        to_encoder_input(random_images(1, 4, 8), channels=1, size=8)
    assert describe_conversion((3, 32, 32), 1, 28) == "3×32×32 → 1×28×28 (luminance, bilinear antialiased resize)"


def test_targets_are_named_with_an_optional_directory():
    assert TransferTarget.parse("cifar10") == TransferTarget("cifar10", None)
    assert TransferTarget.parse("image-folder:/data/a:b") == TransferTarget("image-folder", "/data/a:b")
    for bad, message in (("imagenet", "unknown dataset 'imagenet'"), ("image-folder", "needs its directory")):
        with pytest.raises(UserError, match=message):
            TransferTarget.parse(bad)
        with pytest.raises(UserError, match="eval.transfer"):
            resolve_config("fmnist", [f"eval.transfer={bad}"])


def write_cifar10(root: Path, per_batch: int = 20) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, per_batch).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}, protocol=4))
    return root


def test_a_run_is_scored_on_other_datasets_beside_their_baselines(tiny_data, tmp_path, capsys):
    folder, cifar = write_labelled_folder(tmp_path / "colours"), write_cifar10(tmp_path / "cifar")
    args = ["train", "--quiet", "--no-report", "--data-dir", str(tiny_data), *TINY_RUN, f"run.out_dir={tmp_path}", "run.name=t",
            f"eval.transfer=image-folder:{folder},cifar10:{cifar}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"transfer to image-folder:{folder} (decoded at 28 px (centre crop, resize), 3×28×28 → 1×28×28 (luminance))" in out
    assert f"transfer to cifar10:{cifar} (3×32×32 → 1×28×28 (luminance, bilinear antialiased resize))" in out
    evaluation = json.loads((tmp_path / "t" / "eval.json").read_text())
    folder_section, cifar_section = evaluation["transfer"]
    assert (folder_section["train_images"], folder_section["test_images"]) == (36, 18)
    assert (cifar_section["train_images"], cifar_section["test_images"]) == (100, 20)
    for section in (folder_section, cifar_section):
        assert [row["name"] for row in section["rows"]] == ["raw pixels", "random convnet", "byol convnet"]
        assert all(0 <= row["knn"]["5"] <= 1 and 0 <= row["linear"]["top1"] <= 1 for row in section["rows"])
        assert section["rows"][0]["dim"] == 784 and section["rows"][-1]["dim"] == 16
    # The colour squares survive the grey conversion: their raw pixels separate the three classes.
    assert folder_section["rows"][0]["knn"]["5"] > 0.9


def test_a_target_without_labelled_splits_is_a_clear_error(tiny_data, tmp_path):
    write_random_photos(tmp_path / "photos", count=2, side=8)
    config = resolve_config("fmnist", [*TINY_RUN, f"data.data_dir={tiny_data}", f"run.out_dir={tmp_path}", "run.device=cpu", "run.name=u",
                                       f"eval.transfer=image-folder:{tmp_path / 'photos'}"])
    from nocollapse.train.loop import Trainer

    with pytest.raises(UserError, match="transfer needs labelled train and test splits; image-folder here has unlabeled"):
        Trainer(config, progress=False, log=lambda *_: None)


def test_a_run_on_unlabelled_images_gets_its_accuracy_from_a_labelled_target(tmp_path, capsys):
    photos, colours = write_random_photos(tmp_path / "photos", count=64, side=20), write_labelled_folder(tmp_path / "colours")
    args = ["train", "--quiet", "--no-report", *TINY_RUN, "data.dataset=image-folder", f"data.data_dir={photos}", "data.image_size=20",
            "augment.mean=", "augment.std=", f"run.out_dir={tmp_path}", "run.name=u", f"eval.transfer=image-folder:{colours}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "no accuracy: it needs labelled train/ and test/ splits" in out and f"transfer to image-folder:{colours}" in out
    evaluation = json.loads((tmp_path / "u" / "eval.json").read_text())
    assert all(not row["knn"] for row in evaluation["rows"])  # none on the run's own images
    (section,) = evaluation["transfer"]
    assert section["conversion"] == "decoded at 20 px (centre crop, resize), 3×20×20 → 3×20×20 (as is)"
    assert [row["name"] for row in section["rows"]] == ["raw pixels", "random convnet", "byol convnet"]
    assert section["rows"][0]["knn"]["5"] > 0.9  # the colours' own pixels


def test_a_missing_transfer_target_stops_the_run_before_it_trains(tiny_data, tmp_path, capsys):
    args = ["train", "--quiet", "--data-dir", str(tiny_data), *TINY_RUN, f"run.out_dir={tmp_path}", "run.name=m",
            f"eval.transfer=image-folder:{tmp_path / 'nowhere'}"]
    assert main(args) == 2
    assert "eval.transfer=image-folder:" in capsys.readouterr().err
    assert not (tmp_path / "m" / "checkpoint.pt").exists()
