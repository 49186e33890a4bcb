"""Download a dataset's official files and verify each one before it lands in place (urllib only).

A file is written to a temporary name in the target folder and renamed into place only after its hash matches,
so an interrupted or tampered download never leaves a file that looks complete, and a good copy already there is
never overwritten.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from nocollapse.data import stl10
from nocollapse.data.cifar import CIFAR
from nocollapse.errors import UserError

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# SHA-256 of the four official files. How they were obtained (offline, reproducibly): the Debian package
# dataset-fashion-mnist ships the official deflate streams, but dh_strip_nondeterminism rewrote each gzip header
# (file name dropped, mtime set to the package date), so its files differ from the download. Re-inserting the
# original name and the original mtime (2017-08-31 10:50:06 UTC for train-*, 10:50:27 UTC for t10k-*, found by
# search) reproduces files whose MD5s equal the MD5s published in the Fashion-MNIST README (8d4fb7e6…,
# 25c81989…, bef4ecab…, bb300cfd…) and whose sizes equal the official ones; their SHA-256s are below. They also
# equal the SHA-256s that TensorFlow Datasets publishes for these URLs (url_checksums/fashion_mnist.txt).
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
# The CIFAR page (https://www.cs.toronto.edu/~kriz/cifar.html) publishes only MD5s, so the archives are checked
# by MD5: enough against corruption, weaker than SHA-256 against deliberate tampering. The extracted pickles are
# then read by a loader that refuses to run code (nocollapse.data.cifar.load_pickle).
CIFAR_MD5 = {
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    "cifar100": {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
}
STL10_URL = "http://ai.stanford.edu/~acoates/stl10/"
# The STL-10 page publishes no checksum. This SHA-256 (of the 2,640,397,119-byte archive) is the one TensorFlow
# Datasets pins for this URL (tensorflow_datasets/url_checksums/stl10.txt); an independent project measured the
# same digest and found torchvision's MD5 for the file (91f7769df0f17e558f3565bffb0c7dfb) to match it too. The
# URL is plain HTTP, so this hash is what stands between the user and a substituted file.
STL10_SHA256 = {stl10.ARCHIVE: "f31fd99273a1acb8609c8db427cebb1de3f71de77758cdc0e22956e1289b9866"}
DOWNLOADABLE = ("fashion-mnist", "cifar10", "cifar100", "stl10")
_CHUNK = 1 << 20  # bytes per read: small enough for a lively progress line, large enough to be fast
_OFFLINE_HINT = ("offline or behind a proxy? On Debian/Ubuntu `sudo apt-get install dataset-fashion-mnist` installs "
                 "Fashion-MNIST without this download; or copy the files into the folder by hand")


def _hasher(digest: str) -> "hashlib._Hash":
    """SHA-256 for 64 hex digits, MD5 for 32 (only where the publisher gives nothing better)."""
    if len(digest) == 64:
        return hashlib.sha256()
    if len(digest) == 32:
        return hashlib.md5(usedforsecurity=False)
    raise ValueError(f"expected a 64-hex-digit SHA-256 or 32-hex-digit MD5, got {digest!r}")


def file_digest(path: Path, like: str) -> str:
    """Hex digest of ``path`` with the algorithm implied by ``like``'s length (see :func:`_hasher`)."""
    hasher = _hasher(like)
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(_CHUNK), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


class _Progress:
    """One self-overwriting stderr line: ``name  12.3 / 26.4 MB``."""

    def __init__(self, name: str, total: int | None, enabled: bool) -> None:
        self.name, self.total, self.enabled, self.last = name, total, enabled, 0.0

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last < 0.2):
            return
        self.last = now
        total = f" / {self.total / 1e6:.1f}" if self.total else ""
        print(f"\r{self.name}  {done / 1e6:.1f}{total} MB", end="\n" if final else "", file=sys.stderr, flush=True)


def _network_error(url: str, error: Exception) -> UserError:
    if isinstance(error, urllib.error.HTTPError):
        return UserError(f"download of {url} failed: HTTP {error.code} {error.reason}; the file may have moved "
                         f"(a mirror can be given as base_url). {_OFFLINE_HINT}")
    reason = getattr(error, "reason", None) or error
    return UserError(f"download of {url} failed: {reason}; {_OFFLINE_HINT}")


def _fetch(url: str, target: Path, digest: str, progress: bool) -> None:
    """Download ``url`` to a temporary file beside ``target``; rename it into place only if its hash is ``digest``.

    Network failures raise UserError; a failure to write (disk full) propagates as OSError for the caller to word.
    """
    hasher = _hasher(digest)
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=60)
            except (OSError, http.client.HTTPException) as error:  # URLError and HTTPError are OSErrors
                raise _network_error(url, error) from None
            with response:
                length = response.headers.get("Content-Length")
                bar = _Progress(target.name, int(length) if length and length.isdigit() else None, progress)
                done = 0
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except (OSError, http.client.HTTPException) as error:  # reset, timeout, IncompleteRead
                        raise _network_error(url, error) from None
                    if not chunk:
                        break
                    out.write(chunk)
                    hasher.update(chunk)
                    done += len(chunk)
                    bar.update(done)
                bar.update(done, final=True)
        got = hasher.hexdigest()
        if got != digest:
            kind = "SHA-256" if len(digest) == 64 else "MD5"
            raise UserError(f"{url} failed verification: expected {kind} {digest}, got {got}. The download was corrupted "
                            f"or the server sent a different file; it was deleted and {target} left as it was. Try again")
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)  # after a successful replace the temporary name no longer exists


def _extract(archive: Path, to: Path, folder: str) -> list[Path]:
    """Extract the official archive's ``<folder>/*`` regular files into ``to``; anything else in it is refused."""
    extracted: list[Path] = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                parts = Path(member.name).parts
                if member.isdir() and parts == (folder,):
                    continue
                # Only plain files directly inside the expected folder: no links, no absolute or ../ paths.
                if not member.isfile() or len(parts) != 2 or parts[0] != folder or parts[1] in ("..", "."):
                    raise UserError(f"{archive} contains an unexpected entry {member.name!r}; it is not the official archive")
                source = tar.extractfile(member)
                assert source is not None  # regular files always have a payload
                target = to / folder / parts[1]
                target.parent.mkdir(exist_ok=True)
                # Written under a temporary name and renamed once whole, so an interrupted extraction never leaves a
                # cut-short file in place: STL-10's raw images have no header, and one cut at a multiple of 27,648
                # bytes would load as a smaller split without any error.
                partial = target.with_name(f".{target.name}.part")
                try:
                    with source, partial.open("wb") as out:
                        shutil.copyfileobj(source, out, _CHUNK)
                    os.replace(partial, target)
                finally:
                    partial.unlink(missing_ok=True)  # after a successful replace the temporary name no longer exists
                extracted.append(target)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise UserError(f"cannot extract {archive}: {error}; delete it and download again") from None
    return extracted


def _source(name: str) -> tuple[str, dict[str, str], str | None]:
    """(official base URL, {file name: hex digest}, folder an archive extracts to or None for plain files) of ``name``.

    Read at call time, not import time, so that tests can point the URLs at a local server.
    """
    if name == "fashion-mnist":
        return FASHION_MNIST_URL, FASHION_MNIST_SHA256, None
    if name == "stl10":
        return STL10_URL, STL10_SHA256, stl10.FOLDER
    return CIFAR_URL, CIFAR_MD5[name], CIFAR[name].folder


def download_dataset(name: str, to: str | os.PathLike, *, base_url: str | None = None,
                     files: dict[str, str] | None = None, progress: bool = True) -> list[Path]:
    """Download the official files of dataset ``name`` into folder ``to`` and verify each; return their paths.

    ``name``: "fashion-mnist" (the four IDX .gz files, SHA-256-verified), "cifar10" / "cifar100" (the official
    archive, MD5-verified as the CIFAR page publishes only MD5) or "stl10" (the official 2.6 GB archive,
    SHA-256-verified); an archive is then extracted to its official folder inside ``to``.
    ``base_url`` replaces the official host; ``files`` replaces the ``{file name: hex digest}`` table (SHA-256,
    or MD5 for 32 hex digits) — both for mirrors and tests. Files already present with the right hash are not
    downloaded again. ``progress`` prints a byte counter on stderr. Raises UserError on network errors and hash
    mismatches; a mismatching download is deleted and an existing file is left untouched.
    """
    if name not in DOWNLOADABLE:
        raise UserError(f"cannot download {name!r}; downloadable datasets: {', '.join(DOWNLOADABLE)}")
    official_url, table, folder = _source(name)
    table = dict(files) if files is not None else table
    base = (base_url or official_url).rstrip("/") + "/"
    for digest in table.values():
        _hasher(digest)  # a malformed table fails before any download
    to = Path(os.path.expanduser(os.fspath(to)))
    try:
        to.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {to}: {error.strerror or error}") from None

    paths: list[Path] = []
    for filename, digest in table.items():
        target = to / filename
        if target.is_file() and file_digest(target, digest) == digest:
            if progress:
                print(f"{filename}  already present, verified", file=sys.stderr)
        else:
            try:
                _fetch(base + filename, target, digest, progress)
            except OSError as error:  # writing the temporary file or renaming it (disk full, permissions)
                raise UserError(f"cannot write {target}: {error.strerror or error}") from None
        paths.append(target)
    if folder is None:
        return paths
    return [p for archive in paths for p in _extract(archive, to, folder)]
