"""Using what was learned: load_encoder with its preprocessing, and `nocollapse embed` into every format."""

import errno
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_RUN, write_random_photos, write_tiny_fashion_mnist
from nocollapse.cli import main
from nocollapse.config import resolve_config
from nocollapse.embed import embed
from nocollapse.embedding_files import EmbeddingWriter, read_embeddings
from nocollapse import load_encoder
from nocollapse.encoder import ENCODER_FORMAT, Preprocess
from nocollapse.errors import UserError
from nocollapse.eval.features import encoder_features
from nocollapse.train.loop import Trainer

Image = pytest.importorskip("PIL.Image")
QUIET = {"progress": False, "log": lambda *_: None}


@pytest.fixture(scope="module")
def fmnist_run(tmp_path_factory):
    """A tiny grayscale run (Fashion-MNIST format, standardised inputs) and its data folder."""
    root = tmp_path_factory.mktemp("embed-fmnist")
    data = write_tiny_fashion_mnist(root / "data")
    config = resolve_config("fmnist", [*TINY_RUN, f"data.data_dir={data}", f"run.out_dir={root}", "run.name=run", "run.device=cpu",
                                       "eval.monitor_every=0"])
    trainer = Trainer(config, progress=False, log=lambda *_: None)
    trainer.fit()
    return trainer, data


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory):
    """A tiny RGB run on an image folder at 16 px."""
    root = tmp_path_factory.mktemp("embed-rgb")
    write_random_photos(root / "photos")
    config = resolve_config("fmnist", [*TINY_RUN, "data.dataset=image-folder", f"data.data_dir={root / 'photos'}", "data.image_size=16",
                                       "augment.mean=0.5,0.4,0.3", "augment.std=0.2,0.25,0.3", f"run.out_dir={root}", "run.name=run",
                                       "run.device=cpu", "eval.monitor_every=0", "optim.batch_size=16", f"data.cache_dir={root / 'cache'}"])
    trainer = Trainer(config, progress=False, log=lambda *_: None)
    trainer.fit()
    return trainer


def new_images(folder: Path, count: int = 9) -> list[Path]:
    """Images the run never saw, of other sizes and shapes, some grayscale, in nested folders."""
    rng = np.random.default_rng(1)
    paths = []
    for i in range(count):
        path = folder / f"set{i % 2}" / f"{i}.{'jpg' if i % 3 else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        shape = (30 + i, 24) if i % 4 else (40, 40)
        pixels = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        Image.fromarray(pixels if i % 5 else pixels[..., 0]).save(path)
        paths.append(path)
    return sorted(paths)


def test_encoder_of_preprocess_is_exactly_what_embed_writes_and_the_same_input_gives_the_same_file(rgb_run, tmp_path):
    paths = new_images(tmp_path / "new")
    encoder, preprocess, header = load_encoder(rgb_run.run_dir)
    assert header["format"] == str(ENCODER_FORMAT) and preprocess == Preprocess(16, 3, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    assert not encoder.training
    with torch.no_grad():
        want = encoder(preprocess(paths))
    result = embed(rgb_run.run_dir, [tmp_path / "new"], tmp_path / "a.npy", **QUIET)
    got, sources, labels = read_embeddings(tmp_path / "a.npy")
    assert result.rows == len(paths) and sources == [str(p) for p in paths] and labels == [None] * len(paths)
    assert torch.equal(got, want), "bit for bit on the CPU"
    embed(rgb_run.run_dir, [tmp_path / "new"], tmp_path / "b.npy", **QUIET)
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    assert (tmp_path / "a.txt").read_text() == (tmp_path / "b.txt").read_text()
    # The encoder file alone rebuilds the same encoder and contract: it travels without its run directory.
    alone = tmp_path / "elsewhere" / "encoder.safetensors"
    alone.parent.mkdir()
    alone.write_bytes((rgb_run.run_dir / "encoder.safetensors").read_bytes())
    encoder2, preprocess2, _ = load_encoder(alone)
    with torch.no_grad():
        assert preprocess2 == preprocess and torch.equal(encoder2(preprocess2(paths)), want)


def test_preprocessing_matches_the_evaluation_and_converts_channels_as_training_does(fmnist_run, rgb_run, tmp_path):
    trainer, _ = fmnist_run
    encoder, preprocess, _ = load_encoder(trainer.run_dir)
    images = trainer.test_set.images[:50]
    config = trainer.config
    expected = encoder_features(encoder, images, mean=config.augment.mean, std=config.augment.std, amp=False)
    with torch.no_grad():
        assert torch.equal(encoder(preprocess(images)), expected)
        assert torch.equal(encoder(preprocess(images.float() / 255)), expected), "floats in [0, 1] as uint8 / 255"
    rgb = torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8)
    # Colour into a grayscale encoder: Pillow's luma, exactly, as an RGB file decoded for it would be.
    luma = torch.stack([torch.from_numpy(np.array(Image.fromarray(image.permute(1, 2, 0).numpy()).convert("L"))) for image in rgb])[:, None]
    assert torch.equal(preprocess(rgb), preprocess(luma))
    # Grayscale into an RGB encoder: repeated over the channels.
    _, rgb_preprocess, _ = load_encoder(rgb_run.run_dir)
    gray = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)
    assert torch.equal(rgb_preprocess(gray), rgb_preprocess(gray.expand(-1, 3, -1, -1)))
    with pytest.raises(UserError, match="the images have 4 channels; this encoder takes 3"):
        rgb_preprocess(torch.zeros(1, 4, 16, 16, dtype=torch.uint8))
    # Another size: centre-cropped and resized to the run's; a PIL image as its file.
    assert rgb_preprocess(torch.zeros(2, 3, 30, 20, dtype=torch.uint8)).shape == (2, 3, 16, 16)
    paths = new_images(tmp_path)
    with Image.open(paths[0]) as opened:
        assert torch.equal(rgb_preprocess([opened]), rgb_preprocess(paths[:1]))


def test_a_dataset_split_gives_its_labels_and_the_evaluation_features_and_projections_come_from_the_checkpoint(fmnist_run, tmp_path):
    trainer, data = fmnist_run
    out = tmp_path / "test.safetensors"
    assert main(["embed", str(trainer.run_dir), "fashion-mnist:test", "--data-dir", str(data), "--out", str(out), "--device", "cpu",
                 "--quiet"]) == 0
    got, sources, labels = read_embeddings(out)
    config, images = trainer.config, trainer.test_set.images
    expected = encoder_features(trainer.method.encoder, images, mean=config.augment.mean, std=config.augment.std, amp=False)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)  # the trained module, reloaded: same weights
    assert labels == trainer.test_set.labels.tolist() and sources[:2] == ["fashion-mnist:test:0", "fashion-mnist:test:1"]
    embed(trainer.run_dir, ["fashion-mnist:test"], tmp_path / "p.npy", what="projections", data_dir=str(data), **QUIET)
    projections, _, _ = read_embeddings(tmp_path / "p.npy")
    wanted = encoder_features(trainer.method, images, mean=config.augment.mean, std=config.augment.std, amp=False, forward=trainer.method.embed)
    assert projections.shape == (len(images), config.model.projection_dim)
    torch.testing.assert_close(projections, wanted, rtol=0, atol=1e-5)


@pytest.mark.parametrize("suffix", [".npy", ".safetensors", ".parquet"])
def test_every_format_reads_back_the_same_rows_sources_and_labels(tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    rows = torch.randn(8, 5)
    sources = ["a.png", "tab\there.jpg", "new\nline.png", "line\u2028separator.png", "back\\slash.png", "é日.png", "x:test:5", "y"]
    labels = [None, 3, None, 4, 0, 1, 9, None]
    writer = EmbeddingWriter(tmp_path / f"out{suffix}", 5, {"what": "features"})
    writer.write(rows[:3], sources[:3], labels[:3])
    writer.write(rows[3:], sources[3:], labels[3:])
    writer.finish()
    got, got_sources, got_labels = read_embeddings(tmp_path / f"out{suffix}")
    assert torch.equal(got, rows) and got_sources == sources and got_labels == labels
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"out{suffix}"] + (["out.txt"] if suffix == ".npy" else []))
    if suffix == ".safetensors":  # written by hand: the reference reader must agree
        from safetensors.torch import load_file

        assert torch.equal(load_file(tmp_path / "out.safetensors")["embeddings"], rows)
    if suffix == ".npy":
        assert np.array_equal(np.load(tmp_path / "out.npy"), rows.numpy())


def test_unreadable_files_stop_with_one_list_or_are_skipped_and_listed_beside_the_output(rgb_run, tmp_path):
    paths = new_images(tmp_path / "new", count=5)
    (tmp_path / "new" / "broken.png").write_bytes(b"\x89PNG cut")
    (tmp_path / "new" / "empty.jpg").write_bytes(b"")
    with pytest.raises(UserError, match=r"(?s)2 image file\(s\) cannot be read:\n  [^\n]*broken.png: [^\n]*\n  [^\n]*empty.jpg: empty file .*--skip-unreadable"):
        embed(rgb_run.run_dir, [tmp_path / "new"], tmp_path / "e.npy", **QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"], "nothing written, no temporary file left"
    result = embed(rgb_run.run_dir, [tmp_path / "new"], tmp_path / "e.npy", skip_unreadable=True, **QUIET)
    assert result.rows == 5 and read_embeddings(tmp_path / "e.npy")[1] == [str(p) for p in paths]
    listed = (tmp_path / "e.skipped.txt").read_text()
    assert "broken.png\t" in listed and "empty.jpg\tempty file" in listed


def test_an_existing_output_is_refused_unless_forced_and_bad_inputs_are_named(rgb_run, tmp_path, capsys):
    paths = new_images(tmp_path / "new", count=2)
    out = tmp_path / "e.npy"
    run = ["embed", str(rgb_run.run_dir), str(paths[0]), "--out", str(out), "--quiet"]
    assert main(run) == 0
    before = out.read_bytes()
    assert main([*run[:2], str(paths[1]), *run[3:]]) == 2
    assert "already exist" in capsys.readouterr().err and out.read_bytes() == before
    assert main([*run[:2], str(paths[1]), *run[3:], "--force"]) == 0 and out.read_bytes() != before
    for inputs, message in ((["no/such/file.png"], "is neither an image file, a folder nor a dataset split"),
                            (["fashion-mnist:valid"], "unknown split 'valid'")):
        with pytest.raises(UserError, match=message):
            embed(rgb_run.run_dir, inputs, tmp_path / "x.npy", **QUIET)
    with pytest.raises(UserError, match="the suffix says the format"):
        embed(rgb_run.run_dir, paths, tmp_path / "x.csv", **QUIET)
    with pytest.raises(UserError, match="holds no encoder.safetensors or encoder.pt"):
        embed(tmp_path, paths, tmp_path / "x.npy", **QUIET)
    alone = tmp_path / "encoder.safetensors"
    alone.write_bytes((rgb_run.run_dir / "encoder.safetensors").read_bytes())
    with pytest.raises(UserError, match="--what projections needs a run directory with its checkpoint.pt"):
        embed(alone, paths, tmp_path / "x.npy", what="projections", **QUIET)


def test_a_disk_that_fills_mid_write_leaves_no_partial_file(rgb_run, tmp_path, monkeypatch):
    paths = new_images(tmp_path / "new", count=6)
    real_write, calls = EmbeddingWriter.write, []

    def write_then_fill(self, rows, sources, labels):
        calls.append(len(rows))
        if len(calls) == 2:
            self._failed(OSError(errno.ENOSPC, "No space left on device"))  # as a failed write reports it
        real_write(self, rows, sources, labels)

    monkeypatch.setattr(EmbeddingWriter, "write", write_then_fill)
    with pytest.raises(UserError, match=r"cannot write .*e.safetensors \(No space left on device\); nothing was written there"):
        embed(rgb_run.run_dir, paths, tmp_path / "e.safetensors", batch_size=2, **QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]


def test_a_folder_is_decoded_a_batch_ahead_not_loaded_whole(rgb_run, tmp_path, monkeypatch):
    from nocollapse.data import folder

    new_images(tmp_path / "new", count=24)
    decoded, seen_at_first_write = [], []
    real_decode, real_write = folder._decode, EmbeddingWriter.write

    def counted_decode(*args):
        decoded.append(1)
        return real_decode(*args)

    def noting_write(self, *args):
        if not seen_at_first_write:
            seen_at_first_write.append(len(decoded))
        real_write(self, *args)

    monkeypatch.setattr(folder, "_decode", counted_decode)
    monkeypatch.setattr(EmbeddingWriter, "write", noting_write)
    assert embed(rgb_run.run_dir, [tmp_path / "new"], tmp_path / "e.npy", batch_size=4, **QUIET).rows == 24
    assert seen_at_first_write[0] <= 8, "at the first batch written, at most that batch and the next are decoded"


def test_encoder_files_that_are_damaged_newer_foreign_or_old_are_handled(rgb_run, tmp_path):
    source = (rgb_run.run_dir / "encoder.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(source[: len(source) // 2])
    with pytest.raises(UserError, match="cannot read .*cut.safetensors .*truncated, damaged or not safetensors"):
        load_encoder(cut)
    length = struct.unpack("<Q", source[:8])[0]
    header = json.loads(source[8 : 8 + length])

    def rewritten(name: str, metadata: dict) -> Path:
        encoded = json.dumps({**header, "__metadata__": metadata}).encode()
        encoded += b" " * (-len(encoded) % 8)
        path = tmp_path / name
        path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + source[8 + length :])
        return path
    with pytest.raises(UserError, match="of encoder format '3', newer than this nocollapse reads"):
        load_encoder(rewritten("newer.safetensors", {**header["__metadata__"], "format": "3"}))
    old = {key: value for key, value in header["__metadata__"].items() if key not in ("format", "mean", "std", "nocollapse", "dataset")}
    encoder, preprocess, _ = load_encoder(rewritten("old.safetensors", old))
    assert preprocess == Preprocess(16, 3), "a format-1 file alone: no normalisation recorded"
    with pytest.raises(UserError, match="does not say which architecture it is"):
        load_encoder(rewritten("foreign.safetensors", {}))
    pickled = tmp_path / "code.pt"
    torch.save({"weights": torch.zeros(2), "thing": Path("x")}, pickled)
    with pytest.raises(UserError, match=r"cannot load .*code.pt as weights .*weights_only=True"):
        load_encoder(pickled)
