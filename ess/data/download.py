"""Fetch a registered corpus from its canonical archive and install it under ``<data_dir>/<name>/``.

The archive is streamed to a temporary file (with a tqdm progress bar) while its sha256 is
computed; the split members are found by basename, each checked exactly as :func:`load_corpus`
would check the installed file (size, UTF-8, trailing newline, registered sha256), and only when
all of them pass are they written, each atomically. Any problem raises a one-line
:class:`~ess.errors.DataError` and leaves the target directory untouched.
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import lzma
import os
import struct
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from ess.checkpoint import atomic_write_bytes
from ess.data.corpus import verify_corpus
from ess.data.registry import SPLITS, CorpusSpec, corpus_dir, get_spec
from ess.data.validation import check_split_bytes, one_line
from ess.errors import DataError

CHUNK = 1 << 20
MAX_MEMBER_BYTES = 1 << 30  # refuse a member this large when the spec gives no size (zip bombs)
TIMEOUT_S = 60


def _as_url(url: str) -> str:
    """Accept a plain local path as well as a URL (``file://`` included)."""
    if "://" not in url and os.path.exists(os.path.expanduser(url)):  # os.path: False for a NUL byte or a long name
        return Path(url).expanduser().resolve().as_uri()
    return url


def fetch(url: str, dest: Path, progress: bool = True) -> str:
    """Stream ``url`` to ``dest`` and return the sha256 of the received bytes."""
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(dest, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            name = PurePosixPath(urllib.request.url2pathname(url.split("?")[0])).name or url
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                      disable=not progress, leave=False) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        raise DataError(f"{url}: download failed (HTTP {err.code} {one_line(err.reason)})") from None
    except urllib.error.URLError as err:
        raise DataError(f"{url}: download failed ({one_line(err.reason)})") from None
    except (OSError, ValueError, http.client.HTTPException) as err:
        raise DataError(f"{url}: download failed ({one_line(err) or type(err).__name__})") from None
    if total is not None and received != total:
        raise DataError(f"{url}: download truncated: received {received:,} of {total:,} bytes")
    return digest.hexdigest()


def _wanted(member: str, pattern: str) -> bool:
    parts = PurePosixPath(member).parts
    if not parts or "__MACOSX" in parts:  # macOS resource-fork junk (PTB's zip has it)
        return False
    return fnmatch.fnmatchcase(parts[-1], pattern)


def _limit(spec: CorpusSpec, split: str) -> int:
    size = spec.size(split)
    return size if size is not None else MAX_MEMBER_BYTES


def _read_zip(archive: Path, label: str, patterns: Mapping[str, str], spec: CorpusSpec) -> dict[str, tuple[str, bytes]]:
    with zipfile.ZipFile(archive) as zf:
        infos = [info for info in zf.infolist() if not info.is_dir()]
        found = {}
        for split in SPLITS:
            info = _pick(label, split, patterns[split], infos, lambda i: i.filename)
            if info.file_size > _limit(spec, split):
                raise DataError(f"{label}: member {info.filename} has {info.file_size:,} bytes, "
                                f"expected at most {_limit(spec, split):,}")
            found[split] = (info.filename, zf.read(info))
        return found


def _read_tar(archive: Path, label: str, patterns: Mapping[str, str], spec: CorpusSpec) -> dict[str, tuple[str, bytes]]:
    with tarfile.open(archive) as tf:
        infos = [info for info in tf.getmembers() if info.isfile()]
        found = {}
        for split in SPLITS:
            info = _pick(label, split, patterns[split], infos, lambda i: i.name)
            if info.size > _limit(spec, split):
                raise DataError(f"{label}: member {info.name} has {info.size:,} bytes, "
                                f"expected at most {_limit(spec, split):,}")
            handle = tf.extractfile(info)
            if handle is None:
                raise DataError(f"{label}: member {info.name} cannot be read")
            found[split] = (info.name, handle.read())
        return found


def _pick(label: str, split: str, pattern: str, infos: list, name_of) -> object:
    matches = [info for info in infos if _wanted(name_of(info), pattern)]
    if len(matches) != 1:
        problem = "no member" if not matches else f"{len(matches)} members"
        raise DataError(f"{label}: {problem} matching {pattern!r} (split {split}) in the archive")
    return matches[0]


def read_members(archive: Path, label: str, patterns: Mapping[str, str],
                 spec: CorpusSpec) -> dict[str, tuple[str, bytes]]:
    """``{split: (member name, bytes)}`` of a zip or tar archive; DataError if unreadable or ambiguous."""
    try:
        if zipfile.is_zipfile(archive):
            return _read_zip(archive, label, patterns, spec)
        if tarfile.is_tarfile(archive):
            return _read_tar(archive, label, patterns, spec)
    except DataError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, zlib.error, lzma.LZMAError, struct.error,
            EOFError, OSError, ValueError, NotImplementedError, RuntimeError) as err:
        # NotImplementedError: an unsupported compression method; RuntimeError: an encrypted member
        reason = one_line(err)[:160] or type(err).__name__
        raise DataError(f"{label}: damaged or unsupported archive ({reason})") from None
    raise DataError(f"{label}: not a zip or tar archive")


def _is_installed(name: str, data_dir: str | os.PathLike | None) -> bool:
    try:
        verify_corpus(name, data_dir)
    except DataError:
        return False
    return True


def download_corpus(name: str, data_dir: str | os.PathLike | None = None, url: str | None = None,
                    progress: bool = True, *, force: bool = False) -> Path:
    """Download corpus ``name`` into ``<data_dir>/<name>/`` and return that directory.

    ``url`` overrides the spec's source (any urllib URL, ``file://`` included, or a local path).
    The archive hash is checked when the spec registers one, each split against the registered
    size and sha256. Files already present and verified are kept unless ``force``. For a spec
    without a :class:`DownloadSpec`, the members are matched by the split file names themselves.
    """
    spec = get_spec(name)
    target = corpus_dir(name, data_dir)
    if not force and _is_installed(name, data_dir):
        return target
    source = url or (spec.download.url if spec.download is not None else None)
    if source is None:
        raise DataError(f"{target}: corpus {name!r} has no known download source; pass a URL or put "
                        f"{', '.join(spec.files[s] for s in SPLITS)} there by hand")
    source = _as_url(source)
    patterns = spec.download.members if spec.download is not None else {s: spec.files[s] for s in SPLITS}
    with tempfile.TemporaryDirectory(prefix="ess-download-") as tmp:
        archive = Path(tmp) / "archive"
        digest = fetch(source, archive, progress)
        expected = spec.download.sha256.lower() if spec.download is not None and spec.download.sha256 else None
        if expected is not None and digest != expected:
            raise DataError(f"{source}: archive sha256 mismatch: got {digest}, corpus {name!r} expects {expected}")
        members = read_members(archive, source, patterns, spec)
    for split, (member, data) in members.items():
        check_split_bytes(spec, split, f"{source}!{member}", data)
    for split, (_, data) in members.items():
        try:
            atomic_write_bytes(target / spec.files[split], data)
        except OSError as err:  # the data directory is a file, read-only, full ...
            raise DataError(f"{target / spec.files[split]}: cannot write ({one_line(err.strerror or err)})") from None
    return target


OFFLINE_ENV = "ESS_OFFLINE"   # 1: no entry point downloads a corpus (the test suite sets it)


def ensure_corpus(name: str, data_dir: str | None = None, *, url: str | None = None) -> Path:
    """The corpus directory, downloading the corpus when its files are missing.

    Every entry point calls it (``python -m ess.search``, ``python -m ess.train``, the Tune jobs), so they
    behave alike offline. The download shows a progress bar and checks the sha256
    (:func:`ess.data.download_corpus`); offline, or with ``ESS_OFFLINE=1``, the one-line :class:`DataError`
    says where to put the files. A generated corpus (``planted``) is generated, never downloaded.
    """
    spec = get_spec(name)
    target = corpus_dir(name, data_dir).resolve()
    missing = [spec.files[s] for s in SPLITS if not (target / spec.files[s]).is_file()]
    if missing:
        generated = getattr(spec, "generator", None) is not None
        if not generated and url is None and os.environ.get(OFFLINE_ENV) == "1":
            raise DataError(f"{target}: corpus {name!r} is missing and {OFFLINE_ENV}=1 forbids downloading it; put "
                            f"{', '.join(spec.files[s] for s in SPLITS)} there (or set ESS_DATA_DIR / --data-dir)")
        print(f"corpus {name!r} is missing from {target}: {'generating' if generated else 'downloading'} it",
              file=sys.stderr, flush=True)
        try:
            download_corpus(name, data_dir, url=url)
        except DataError as err:
            raise DataError(f"{target}: corpus {name!r} is missing and could not be downloaded ({err}); "
                            f"put {', '.join(spec.files[s] for s in SPLITS)} there "
                            "(or set ESS_DATA_DIR / --data-dir)") from None
    verify_corpus(name, data_dir)
    return target
