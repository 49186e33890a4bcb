"""Verified download against a local HTTP server on 127.0.0.1 (tests never touch the internet)."""

import hashlib
import http.server
import io
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

import nocollapse.data.download as download
import nocollapse.data.fashion_mnist as fashion_mnist
import nocollapse.data.stl10 as stl10
from nocollapse.data import DATA_DIR_ENV, download_dataset, load_dataset, write_idx
from nocollapse.errors import UserError


@pytest.fixture(autouse=True)
def no_internet(monkeypatch):
    """A test that forgets base_url hits a refused local port instead of the real host."""
    monkeypatch.setattr(download, "FASHION_MNIST_URL", "http://127.0.0.1:9/")
    monkeypatch.setattr(download, "CIFAR_URL", "http://127.0.0.1:9/")
    monkeypatch.setattr(download, "STL10_URL", "http://127.0.0.1:9/")


class Server:
    """Serves ``files`` ({name: bytes}) and records every requested path; anything else is a 404."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                body = outer.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)  # fast shutdown
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    server = Server()
    yield server
    server.close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part"))


def test_success_writes_verified_files(server, tmp_path, capsys):
    server.files = {"a.gz": b"first file" * 100, "b.gz": b"second"}
    table = {name: sha256(body) for name, body in server.files.items()}
    paths = download_dataset("fashion-mnist", tmp_path / "new" / "dir", base_url=server.url, files=table, progress=True)
    assert [p.name for p in paths] == ["a.gz", "b.gz"]
    assert [p.read_bytes() for p in paths] == [server.files["a.gz"], server.files["b.gz"]]
    assert server.requests == ["/a.gz", "/b.gz"] and leftovers(tmp_path / "new" / "dir") == []
    assert "a.gz" in capsys.readouterr().err  # the byte counter goes to stderr


def test_hash_mismatch_leaves_nothing_and_keeps_an_existing_file(server, tmp_path):
    server.files = {"a.gz": b"tampered"}
    with pytest.raises(UserError) as error:
        download_dataset("fashion-mnist", tmp_path, base_url=server.url, files={"a.gz": "0" * 64}, progress=False)
    assert "0" * 64 in str(error.value) and sha256(b"tampered") in str(error.value)  # expected vs got
    assert list(tmp_path.iterdir()) == []

    (tmp_path / "a.gz").write_bytes(b"the user's own copy")  # not what the table wants, but never destroyed by a bad download
    with pytest.raises(UserError, match="failed verification"):
        download_dataset("fashion-mnist", tmp_path, base_url=server.url, files={"a.gz": "0" * 64}, progress=False)
    assert (tmp_path / "a.gz").read_bytes() == b"the user's own copy" and leftovers(tmp_path) == []


def test_404_is_a_user_error_with_the_url(server, tmp_path):
    with pytest.raises(UserError, match=rf"{server.url}missing\.gz failed: HTTP 404"):
        download_dataset("fashion-mnist", tmp_path, base_url=server.url, files={"missing.gz": "0" * 64}, progress=False)
    assert leftovers(tmp_path) == []


def test_present_file_with_the_right_hash_is_not_downloaded(server, tmp_path):
    (tmp_path / "a.gz").write_bytes(b"good")
    paths = download_dataset("fashion-mnist", tmp_path, base_url=server.url, files={"a.gz": sha256(b"good")}, progress=False)
    assert paths == [tmp_path / "a.gz"] and server.requests == []


def test_present_file_with_a_wrong_hash_is_replaced(server, tmp_path):
    (tmp_path / "a.gz").write_bytes(b"half a downlo")
    server.files = {"a.gz": b"half a download"}
    download_dataset("fashion-mnist", tmp_path, base_url=server.url, files={"a.gz": sha256(b"half a download")}, progress=False)
    assert (tmp_path / "a.gz").read_bytes() == b"half a download"


def test_offline_is_a_user_error_with_a_hint(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UserError, match=r"127\.0\.0\.1.*offline.*apt-get install dataset-fashion-mnist"):
        download_dataset("fashion-mnist", tmp_path, base_url=f"http://127.0.0.1:{port}", files={"a.gz": "0" * 64}, progress=False)


def test_unknown_dataset_and_bad_table(tmp_path):
    with pytest.raises(UserError, match="downloadable datasets: fashion-mnist"):
        download_dataset("imagenet", tmp_path)
    with pytest.raises(ValueError, match="SHA-256"):
        download_dataset("fashion-mnist", tmp_path, files={"a.gz": "abc"}, progress=False)


def test_official_table_is_well_formed():
    assert sorted(download.FASHION_MNIST_SHA256) == sorted(f"{stem}.gz" for pair in fashion_mnist.FILES.values() for stem in pair)
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in download.FASHION_MNIST_SHA256.values())


def test_download_then_load_fashion_mnist(server, tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    source = tmp_path / "source"
    source.mkdir()
    for split, n in (("train", 6), ("test", 4)):
        images, labels = fashion_mnist.FILES[split]
        write_idx(source / f"{images}.gz", np.full((n, 28, 28), 7, dtype=np.uint8))
        write_idx(source / f"{labels}.gz", np.arange(n, dtype=np.uint8))
    server.files = {p.name: p.read_bytes() for p in source.iterdir()}
    table = {name: sha256(body) for name, body in server.files.items()}
    download_dataset("fashion-mnist", tmp_path / "data", base_url=server.url, files=table, progress=False)
    train = load_dataset("fashion-mnist", "train", tmp_path / "data")
    assert train.images.shape == (6, 1, 28, 28) and train.labels.tolist() == list(range(6))


def tarball(entries: dict[str, bytes], *, symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, body in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return buffer.getvalue()


def test_cifar_archive_is_md5_checked_and_extracted(server, tmp_path):
    body = tarball({"cifar-10-batches-py/data_batch_1": b"batch", "cifar-10-batches-py/batches.meta": b"meta"})
    server.files = {"cifar-10-python.tar.gz": body}
    md5 = hashlib.md5(body).hexdigest()  # the CIFAR page publishes MD5s only
    paths = download_dataset("cifar10", tmp_path, base_url=server.url, files={"cifar-10-python.tar.gz": md5}, progress=False)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths) == ["cifar-10-batches-py/batches.meta", "cifar-10-batches-py/data_batch_1"]
    assert (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes() == b"batch"


@pytest.mark.parametrize("entries, symlink", [({"../escape": b"x"}, None), ({}, "cifar-10-batches-py/link")])
def test_cifar_archive_with_unexpected_entries_is_refused(server, tmp_path, entries, symlink):
    body = tarball(entries, symlink=symlink)
    server.files = {"cifar-10-python.tar.gz": body}
    with pytest.raises(UserError, match="unexpected entry"):
        download_dataset("cifar10", tmp_path / "to", base_url=server.url, files={"cifar-10-python.tar.gz": sha256(body)}, progress=False)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "to" / "cifar-10-batches-py" / "link").exists()


def test_stl10_official_table_is_well_formed():
    assert list(download.STL10_SHA256) == [stl10.ARCHIVE] and "stl10" in download.DOWNLOADABLE
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in download.STL10_SHA256.values())


def test_download_then_load_stl10(server, tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(3, 3, 96, 96), dtype=np.uint8)
    files = {
        "train_X.bin": np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes(),  # column-major, as the official files
        "train_y.bin": bytes([1, 10, 4]),
        "unlabeled_X.bin": bytes(2 * stl10.IMAGE_BYTES),
        "class_names.txt": "".join(f"{n}\n" for n in stl10.CLASSES).encode(),
    }
    body = tarball({f"{stl10.FOLDER}/{name}": data for name, data in files.items()})
    server.files = {stl10.ARCHIVE: body}
    paths = download_dataset("stl10", tmp_path, base_url=server.url, files={stl10.ARCHIVE: sha256(body)}, progress=False)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths) == sorted(f"{stl10.FOLDER}/{n}" for n in files)
    train = stl10.load_stl10("train", tmp_path)  # the folder `--to` names is the one to pass as data_dir
    assert train.labels.tolist() == [0, 9, 3] and train.images.load().numpy().tolist() == images.tolist()
    assert len(stl10.load_stl10("unlabeled", tmp_path)) == 2

    (tmp_path / stl10.FOLDER / "train_X.bin").write_bytes(b"cut")  # a damaged file is repaired from the verified archive
    download_dataset("stl10", tmp_path, base_url=server.url, files={stl10.ARCHIVE: sha256(body)}, progress=False)
    assert server.requests == [f"/{stl10.ARCHIVE}"]  # not downloaded again
    assert (tmp_path / stl10.FOLDER / "train_X.bin").read_bytes() == files["train_X.bin"]


def test_stl10_archive_with_unexpected_entries_is_refused(server, tmp_path):
    body = tarball({f"{stl10.FOLDER}/train_X.bin": b"", "cifar-10-batches-py/train_y.bin": b"\x01"})
    server.files = {stl10.ARCHIVE: body}
    with pytest.raises(UserError, match="unexpected entry 'cifar-10-batches-py/train_y.bin'"):
        download_dataset("stl10", tmp_path, base_url=server.url, files={stl10.ARCHIVE: sha256(body)}, progress=False)


def test_interrupted_extraction_leaves_no_cut_short_file(server, tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=20 * stl10.IMAGE_BYTES, dtype=np.uint8).tobytes()  # incompressible
    body = tarball({f"{stl10.FOLDER}/unlabeled_X.bin": images})
    body = body[: len(body) * 3 // 5]  # the archive ends inside the file: what an interrupted copy of it looks like
    server.files = {stl10.ARCHIVE: body}
    with pytest.raises(UserError, match="cannot extract"):
        download_dataset("stl10", tmp_path, base_url=server.url, files={stl10.ARCHIVE: sha256(body)}, progress=False)
    assert sorted(p.name for p in (tmp_path / stl10.FOLDER).iterdir()) == []  # neither the file nor its temporary copy


DEBIAN = Path("/usr/share/datasets/fashion-mnist")
OFFICIAL_MD5 = {  # as published in the Fashion-MNIST README
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}


@pytest.mark.skipif(not (DEBIAN / "t10k-labels-idx1-ubyte.gz").exists(), reason="Debian dataset-fashion-mnist not installed")
def test_sha256_table_is_reproducible_from_the_debian_copies():
    """The Debian files are the official ones with the gzip header normalised; undoing that gives the official MD5."""
    for name, md5 in OFFICIAL_MD5.items():
        debian = (DEBIAN / name).read_bytes()
        assert debian[3] == 0  # FLG: no file name stored
        mtime = 1504176627 if name.startswith("t10k") else 1504176606  # 2017-08-31 10:50:27 / 10:50:06 UTC, see download.py
        # gzip header: magic+method (3 bytes), FLG = FNAME, MTIME (4, little-endian), XFL, OS, then the NUL-terminated name
        official = debian[:3] + b"\x08" + mtime.to_bytes(4, "little") + debian[8:10] + name[:-3].encode() + b"\0" + debian[10:]
        assert hashlib.md5(official).hexdigest() == md5
        assert sha256(official) == download.FASHION_MNIST_SHA256[name]


def test_cli_download_verifies_and_reports(server, tmp_path, monkeypatch, capsys):
    from nocollapse.cli import main

    server.files = {"train-images-idx3-ubyte.gz": b"images", "train-labels-idx1-ubyte.gz": b"labels"}
    monkeypatch.setattr(download, "FASHION_MNIST_SHA256", {name: sha256(body) for name, body in server.files.items()})
    assert main(["download", "fashion-mnist", "--to", str(tmp_path / "data"), "--mirror", server.url]) == 0
    assert "2 files verified" in capsys.readouterr().out
    assert (tmp_path / "data" / "train-labels-idx1-ubyte.gz").read_bytes() == b"labels"

    server.files["train-labels-idx1-ubyte.gz"] = b"tampered"
    (tmp_path / "data" / "train-labels-idx1-ubyte.gz").unlink()
    assert main(["download", "fashion-mnist", "--to", str(tmp_path / "data"), "--mirror", server.url]) == 2
    err = capsys.readouterr().err
    assert "train-labels-idx1-ubyte.gz" in err and "Traceback" not in err
    assert not (tmp_path / "data" / "train-labels-idx1-ubyte.gz").exists()
