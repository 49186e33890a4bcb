"""Your own images: unlabelled folders, their decoded cache, streaming from disk, and what goes wrong."""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_RUN
from nocollapse.cli import main
from nocollapse.config import resolve_config
from nocollapse.data import load_dataset
from nocollapse.data.mapped import MappedImages
from nocollapse.errors import UserError
from nocollapse.nn.backbones import build_backbone, resolve_stem
from nocollapse.report.html import accuracy_table, geometry_table, unscored_note
from nocollapse.report.runs import load_runs

Image = pytest.importorskip("PIL.Image")
RUN = [*TINY_RUN, "data.dataset=image-folder", "augment.mean=", "augment.std=", "run.device=cpu"]


def picture(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy RGB image whose class sets the row of a bright bar."""
    pixels = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    pixels[2 + 3 * label : 5 + 3 * label, 2 : size - 2] = 255
    return pixels


def make_folder(root: Path, *, unlabeled: int = 64, labelled: bool = True, size: int = 40) -> Path:
    """``root/unlabeled/<nested>/*.png`` and, if ``labelled``, ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``."""
    rng = np.random.default_rng(0)
    for i in range(unlabeled):
        path = root / "unlabeled" / f"part{i % 3}" / ("deeper" if i % 2 else "") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture(i % 4, size, rng)).save(path)
    if labelled:
        for split, count in (("train", 48), ("test", 32)):
            for i in range(count):
                path = root / split / f"class{i % 4}" / f"{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(picture(i % 4, size, rng)).save(path)
    return root


def test_an_unlabelled_folder_trains_and_reports_the_geometry_only(tmp_path, capsys):
    data = make_folder(tmp_path / "photos", labelled=False)
    assert main(["train", "--no-report", "--data-dir", str(data), *RUN, f"run.out_dir={tmp_path}", "run.name=unl"]) == 0
    out = capsys.readouterr().out
    assert "image-folder unlabeled (64 images of 3×32×32" in out
    assert "no labelled train/ and test/ splits" in out and "no accuracy: it needs labelled train/ and test/" in out
    saved = json.loads((tmp_path / "unl" / "eval.json").read_text())
    assert [row["knn"] for row in saved["rows"]] == [{}, {}, {}]
    assert all(row["geometry"]["rankme"] >= 1 and row["geometry"]["separability"] is None for row in saved["rows"])
    monitor = [json.loads(line) for line in (tmp_path / "unl" / "metrics.jsonl").read_text().splitlines() if "geometry" in line]
    assert len(monitor) == 2 and not any(key.startswith("knn") for record in monitor for key in record)
    # The report: no empty accuracy table, a line saying why there is none, the geometry of every row.
    runs = load_runs([tmp_path / "unl"])
    assert accuracy_table(runs) == "" and "No accuracy for unl: accuracy needs labelled train/ and test/" in unscored_note(runs)
    assert geometry_table(runs).count("<tr") == 1 + 3 + 2  # header, raw pixels, random and trained encoder, both projections


def test_pretraining_on_unlabeled_and_train_reads_both_and_evaluates_on_the_labelled_splits(tmp_path, capsys):
    data = make_folder(tmp_path / "photos")
    assert main(["train", "--no-report", "--data-dir", str(data), *RUN, f"run.out_dir={tmp_path}", "run.name=both",
                 "data.pretrain_splits=unlabeled,train", "data.image_size=24"]) == 0
    out = capsys.readouterr().out
    assert "image-folder unlabeled+train (112 images of 3×24×24" in out
    saved = json.loads((tmp_path / "both" / "eval.json").read_text())
    assert set(saved["rows"][-1]["knn"]) == {"5", "20"} and saved["rows"][-1]["geometry"]["separability"] is not None


def tiny_trainer(data: Path, out: Path, name: str, *extra: str, resume: bool = False):
    from nocollapse.train.loop import Trainer

    config = resolve_config("fmnist", [*RUN, f"data.data_dir={data}", f"run.out_dir={out}", f"run.name={name}", "eval.monitor_every=0", *extra])
    return Trainer(config, resume=resume, progress=False, log=lambda *_: None)


def test_streaming_from_the_cache_trains_exactly_as_holding_it_in_memory_and_resumes_mid_epoch(tmp_path):
    data = make_folder(tmp_path / "photos", unlabeled=100)
    held = tiny_trainer(data, tmp_path, "memory", "data.stream=memory")
    assert isinstance(held.pretrain_images, torch.Tensor)
    held.fit()
    streamed = tiny_trainer(data, tmp_path, "disk", "data.stream=disk")
    assert isinstance(streamed.pretrain_images, MappedImages) and streamed.streaming
    streamed.fit()
    for key, value in held.method.state_dict().items():
        torch.testing.assert_close(streamed.method.state_dict()[key], value, rtol=0, atol=0, msg=key)

    interrupted = tiny_trainer(data, tmp_path, "resumed", "data.stream=disk", "run.checkpoint_every=1")
    real_step = interrupted.train_step

    def stop_mid_epoch(images, *generators):
        if interrupted.step == 4:  # epoch 2's second step: the checkpoint holds step 4 of 6
            raise KeyboardInterrupt
        return real_step(images, *generators)

    interrupted.train_step = stop_mid_epoch
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    resumed = tiny_trainer(data, tmp_path, "resumed", "data.stream=disk", "run.checkpoint_every=1", resume=True)
    assert resumed.step == 4
    resumed.fit()
    for key, value in held.method.state_dict().items():
        torch.testing.assert_close(resumed.method.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_the_cache_is_reused_rebuilt_when_the_folder_changes_and_never_trusted_when_damaged(tmp_path, image_cache):
    data = make_folder(tmp_path / "photos", labelled=False, unlabeled=12)
    logged: list[str] = []
    first = load_dataset("image-folder", "unlabeled", data, image_size=16, log=logged.append, progress=False)
    assert isinstance(first.images, MappedImages) and first.labels is None and len(first) == 12
    assert any(line.startswith("decoding 12 images") for line in logged)
    expected = first.in_memory().clone()
    # The pixels are the decoder's own: centre crop and bicubic resize of each file.
    reference = np.asarray(Image.open(sorted((data / "unlabeled").rglob("*.png"))[0]).convert("RGB").resize((16, 16), Image.BICUBIC))
    assert np.abs(expected[0].permute(1, 2, 0).numpy().astype(int) - reference.astype(int)).max() <= 1

    logged.clear()
    again = load_dataset("image-folder", "unlabeled", data, image_size=16, log=logged.append, progress=False)
    assert logged == [] and torch.equal(again.in_memory(), expected), "an unchanged folder is read from its cache"

    changed = sorted((data / "unlabeled").rglob("*.png"))[3]
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))
    rebuilt = load_dataset("image-folder", "unlabeled", data, image_size=16, log=logged.append, progress=False)
    assert any("changed since its cache was built" in line for line in logged)
    rebuilt = rebuilt.in_memory()
    assert rebuilt[3].max() == 0 and torch.equal(rebuilt[4:], expected[4:])

    array = next(image_cache.rglob("images.npy"))
    with open(array, "r+b") as file:
        file.truncate(array.stat().st_size - 100)
    logged.clear()
    repaired = load_dataset("image-folder", "unlabeled", data, image_size=16, log=logged.append, progress=False)
    assert any("damaged" in line for line in logged) and torch.equal(repaired.in_memory(), rebuilt)


@pytest.mark.parametrize("workers", [1, 2], ids=["in-process", "process-pool"])
def test_an_interrupted_build_leaves_no_cache_that_a_later_run_would_use(tmp_path, image_cache, monkeypatch, workers):
    from nocollapse.data import folder

    data = make_folder(tmp_path / "photos", labelled=False, unlabeled=200)
    real_decode = folder._decode
    calls = []

    def decode_then_stop(path, size, mode):
        calls.append(path)
        if len(calls) == 150 or (workers > 1 and path.stem == "7"):  # in a pool each process counts its own calls
            raise KeyboardInterrupt
        return real_decode(path, size, mode)

    monkeypatch.setattr(folder, "_decode", decode_then_stop)
    monkeypatch.setattr(os, "cpu_count", lambda: workers)  # forked decoding processes inherit the patch
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        load_dataset("image-folder", "unlabeled", data, image_size=16, progress=False, log=lambda _: None)
    assert time.perf_counter() - started < 30, "the queued images are cancelled, not decoded"
    assert not list(image_cache.rglob("index.json")) and not list(image_cache.rglob("*.tmp"))
    monkeypatch.setattr(folder, "_decode", real_decode)
    logged: list[str] = []
    complete = load_dataset("image-folder", "unlabeled", data, image_size=16, progress=False, log=logged.append)
    assert len(complete) == 200 and any(line.startswith("decoding 200 images") for line in logged)


def test_a_resume_on_data_that_changed_is_refused(tmp_path):
    data = make_folder(tmp_path / "photos", labelled=False, unlabeled=64)
    tiny_trainer(data, tmp_path, "changing", "optim.epochs=1").fit()
    for i in range(32):
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(data / "unlabeled" / f"added-{i}.png")
    with pytest.raises(UserError, match="the run trained on 64 images of 3×32×32, but image-folder now gives 96 .* the data changed"):
        tiny_trainer(data, tmp_path, "changing", "optim.epochs=1", resume=True)


def test_a_full_disk_is_refused_before_the_build_naming_the_space_needed_and_the_old_cache_survives(tmp_path, image_cache, monkeypatch):
    from nocollapse.data import cache

    data = make_folder(tmp_path / "photos", labelled=False, unlabeled=12)
    before = load_dataset("image-folder", "unlabeled", data, image_size=16, progress=False, log=lambda _: None).in_memory()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(data / "unlabeled" / "new.png")  # the folder changed: a rebuild is due
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    with pytest.raises(UserError, match=r"of 13 images at 16 px needs \d+\.\d KB .* has 100 bytes free; free space or set data.cache_dir"):
        load_dataset("image-folder", "unlabeled", data, image_size=16, progress=False, log=lambda _: None)
    array = next(image_cache.rglob("images.npy"))
    assert torch.equal(torch.from_numpy(np.load(array)), before), "the previous cache is intact"
    # Space that the check saw but another writer took meanwhile: the blocks are reserved before any row is written, so
    # the build fails there with the same advice (without the reservation a decoding process would die of SIGBUS).
    monkeypatch.undo()

    def disk_filled_meanwhile(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", disk_filled_meanwhile)
    with pytest.raises(UserError, match=r"writing the image cache in .* failed \(No space left on device\); it needs \d+\.\d KB"):
        load_dataset("image-folder", "unlabeled", data, image_size=16, progress=False, log=lambda _: None)
    assert torch.equal(torch.from_numpy(np.load(array)), before) and not list(image_cache.rglob("*.tmp*"))


def test_files_of_a_killed_build_are_removed_by_the_next_and_a_live_build_keeps_its_own(tmp_path, image_cache):
    data = make_folder(tmp_path / "photos", labelled=False, unlabeled=6)
    quiet = {"image_size": 16, "progress": False, "log": lambda _: None}
    load_dataset("image-folder", "unlabeled", data, **quiet)
    folder = next(image_cache.rglob("images.npy")).parent
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead, host = int(finished.stdout), socket.gethostname()
    abandoned = [folder / f"images.npy.{host}.{dead}.tmp", folder / f"images.npy.{host}.{dead}.tmp.compact", folder / f"index.json.{host}.{dead}.tmp"]
    kept = [folder / f"images.npy.{host}.{os.getppid()}.tmp", folder / f"images.npy.other-host.{dead}.tmp"]
    for path in abandoned + kept:
        path.write_bytes(b"partial")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(data / "unlabeled" / "new.png")  # a rebuild is due
    assert len(load_dataset("image-folder", "unlabeled", data, **quiet)) == 7
    assert not any(path.exists() for path in abandoned) and all(path.exists() for path in kept)


def test_an_unwritable_cache_directory_is_a_clear_error(tmp_path):
    data = make_folder(tmp_path / "photos", labelled=False, unlabeled=4)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot create the image cache in .*set data.cache_dir to a writable folder"):
        load_dataset("image-folder", "unlabeled", data, image_size=16, cache_dir=blocker / "cache", progress=False, log=lambda _: None)


@pytest.mark.parametrize("layout, message", [
    ({"unlabeled": []}, "no images in .*unlabeled"),
    ({"test/a": ["x.png"]}, "has test/ but no train/"),
    ({"train/a": ["x.png"], "test/a": ["y.png"], "test/b": ["z.png"]}, "is a class that .*train does not have"),
    ({"unlabeled": ["bad.png"]}, "None of the images can be read"),
], ids=["empty unlabeled", "test without train", "new class in test", "only unreadable files"])
def test_bad_folders_are_named_with_what_to_do(tmp_path, layout, message):
    rng = np.random.default_rng(0)
    for folder, files in layout.items():
        (tmp_path / folder).mkdir(parents=True)
        for name in files:
            if name == "bad.png":
                (tmp_path / folder / name).write_bytes(b"not a png")
            else:
                Image.fromarray(picture(0, 12, rng)).save(tmp_path / folder / name)
    split = "unlabeled" if "unlabeled" in layout else "test" if "train/a" not in layout else "train"
    with pytest.raises(UserError, match=message):
        load_dataset("image-folder", split, tmp_path, image_size=8, progress=False, log=lambda _: None)


def test_skip_unreadable_leaves_them_out_and_lists_them_in_the_run_directory(tmp_path, capsys):
    data = make_folder(tmp_path / "photos", labelled=False, unlabeled=40)
    (data / "unlabeled" / "broken.png").write_bytes(b"\x89PNG cut short")
    run = ["train", "--no-report", "--no-eval", "--data-dir", str(data), *RUN, f"run.out_dir={tmp_path}"]
    assert main([*run, "run.name=strict"]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert main([*run, "run.name=lenient", "data.skip_unreadable=true"]) == 0
    listed = (tmp_path / "lenient" / "skipped_files.txt").read_text()
    assert "broken.png" in listed and "1 unreadable image file(s) left out" in capsys.readouterr().out


def test_absurd_image_sizes_are_refused_and_built_in_datasets_keep_their_own():
    with pytest.raises(UserError, match=r"data.image_size=5000: must be an integer 0\.\.1024|data.image_size=5000: must be"):
        resolve_config("fmnist", ["data.image_size=5000"])
    with pytest.raises(UserError, match="fashion-mnist images are 28 px and are not resized"):
        load_dataset("fashion-mnist", "train", image_size=64)


def test_the_resnet_stem_follows_the_image_size_unless_set():
    assert resolve_stem("auto", 32) == "cifar" and resolve_stem("auto", 64) == "cifar" and resolve_stem("auto", 96) == "imagenet"
    assert resolve_stem("cifar", 224) == "cifar"
    small, large = (build_backbone("resnet18", in_channels=3, image_size=side) for side in (32, 96))
    assert small.stem[0].kernel_size == (3, 3) and large.stem[0].kernel_size == (7, 7)


REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not REAL_FASHION_MNIST.is_dir(), reason="needs the Debian package dataset-fashion-mnist")
def test_fashion_mnist_written_out_as_a_folder_reads_back_as_the_built_in_reader_gives_it(tmp_path):
    """The folder path is the built-in one on the same images: PNGs at their own size decode to the same bytes,
    in the same order, so a run on the folder follows the built-in run's trajectory exactly (same seed)."""
    built_in = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    count = 600
    for i in range(count):
        path = tmp_path / "unlabeled" / f"{i // 100:02d}" / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(built_in.images[i, 0].numpy()).save(path)
        label = int(built_in.labels[i])
        path = tmp_path / "train" / f"{label}-{built_in.classes[label]}" / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(built_in.images[i, 0].numpy()).save(path)
    for i in range(200):
        label = int(test.labels[i])
        path = tmp_path / "test" / f"{label}-{test.classes[label]}" / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.images[i, 0].numpy()).save(path)
    unlabeled = load_dataset("image-folder", "unlabeled", tmp_path, image_size=28, progress=False, log=lambda _: None)
    assert unlabeled.images.shape == (count, 1, 28, 28)
    assert torch.equal(unlabeled.in_memory(), built_in.images[:count])
    train = load_dataset("image-folder", "train", tmp_path, image_size=28, progress=False, log=lambda _: None)
    # Class folders sort by name, then files: the same images, grouped by class, with their own labels.
    order = torch.argsort(built_in.labels[:count], stable=True)
    assert torch.equal(train.in_memory(), built_in.images[:count][order]) and torch.equal(train.labels, built_in.labels[:count][order])


def test_linked_folders_are_followed_once_and_an_unlistable_folder_is_an_error(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "photos", labelled=False, unlabeled=6)
    elsewhere = make_folder(tmp_path / "more", labelled=False, unlabeled=3) / "unlabeled"
    (data / "unlabeled" / "linked").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(elsewhere, target_is_directory=True)  # a link to its own folder: listed once, not forever
    quiet = {"image_size": 8, "progress": False, "log": lambda _: None}
    assert len(load_dataset("image-folder", "unlabeled", data, **quiet)) == 6 + 3
    # Permissions do not stop root, who runs CI: the listing itself is made to fail, as chmod 000 would for a user.
    blocked, scandir = data / "unlabeled" / "part1", os.scandir

    def scandir_refusing_one_folder(path="."):
        if Path(path) == blocked:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", scandir_refusing_one_folder)
    with pytest.raises(UserError, match=rf"1 folder\(s\) under .* cannot be listed:\n  {blocked}: Permission denied\nMake them readable"):
        load_dataset("image-folder", "unlabeled", data, **quiet)
