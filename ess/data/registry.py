"""The corpus registry: each known corpus's spec, with the directory its split files live in.

PTB and WikiText-2 are registered here with their sizes, sha256 and download archive; generated corpora
(:mod:`ess.data.planted`) register themselves; users may add their own with :func:`register_corpus`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from ess.errors import DataError

SPLITS = ("train", "valid", "test")
DATA_DIR_ENV = "ESS_DATA_DIR"
DEFAULT_DATA_DIR = "data"
GENERATED_DIR_ENV = "ESS_GENERATED_DIR"


@dataclass(frozen=True)
class DownloadSpec:
    """Where a corpus archive can be fetched from and which archive members hold its splits.

    ``members`` maps a split to a glob pattern matched against member *basenames*
    (e.g. ``"ptb.train.txt"``); ``sha256`` is the archive's hash, or None when unknown.
    """

    url: str
    members: Mapping[str, str]
    sha256: str | None = None


class CorpusGenerator(Protocol):
    """What a generated corpus's spec carries (value-comparable, e.g. a frozen dataclass of parameters).

    ``generate(out, name)`` writes the split files and the manifest into the existing empty directory
    ``out``; the manifest (JSON, file name ``manifest``) holds at least ``fingerprint``, ``bytes`` and
    ``sha256`` (per split); ``summary(manifest)`` is a one-line description for the user.
    """

    manifest: str

    def fingerprint(self) -> str: ...

    def generate(self, out: Path, name: str) -> Mapping[str, Any]: ...

    def summary(self, manifest: Mapping[str, Any]) -> str: ...


@dataclass(frozen=True)
class CorpusSpec:
    """A registered corpus: the file of each split and, when known, its byte size and sha256.

    ``sizes``/``sha256`` may be None as a whole or per split; only known values are checked.
    A spec with a ``generator`` is generated on first use (see :mod:`ess.data.generated`), not downloaded.
    """

    name: str
    files: Mapping[str, str]
    sizes: Mapping[str, int | None] | None = None
    sha256: Mapping[str, str | None] | None = None
    download: DownloadSpec | None = None
    generator: CorpusGenerator | None = None

    def __post_init__(self) -> None:
        missing = [s for s in SPLITS if s not in self.files]
        if missing:
            raise ValueError(f"corpus spec {self.name!r} lacks the split(s) {', '.join(missing)}")
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ValueError(f"corpus name {self.name!r} must be a plain directory name")
        if self.download is not None:
            absent = [s for s in SPLITS if s not in self.download.members]
            if absent:
                raise ValueError(f"download spec of {self.name!r} lacks members for {', '.join(absent)}")
        if self.download is not None and self.generator is not None:
            raise ValueError(f"corpus spec {self.name!r} is either downloaded or generated, not both")

    def size(self, split: str) -> int | None:
        return None if self.sizes is None else self.sizes.get(split)

    def digest(self, split: str) -> str | None:
        value = None if self.sha256 is None else self.sha256.get(split)
        return value.lower() if value else None


CORPORA: dict[str, CorpusSpec] = {}


def register_corpus(spec: CorpusSpec, *, overwrite: bool = False) -> CorpusSpec:
    """Add ``spec`` to :data:`CORPORA`; re-registering a name needs ``overwrite=True``."""
    if spec.name in CORPORA and not overwrite and CORPORA[spec.name] != spec:
        raise ValueError(f"corpus {spec.name!r} is already registered (pass overwrite=True to replace it)")
    CORPORA[spec.name] = spec
    return spec


def get_spec(name: str) -> CorpusSpec:
    """The registered spec of ``name``; a :class:`DataError` listing the known names otherwise."""
    try:
        return CORPORA[name]
    except KeyError:
        known = ", ".join(sorted(CORPORA)) or "none"
        raise DataError(f"unknown corpus {name!r}; known corpora: {known}") from None


SPLIT_FILES = MappingProxyType({s: f"{s}.txt" for s in SPLITS})

register_corpus(CorpusSpec(
    name="ptb",
    files=SPLIT_FILES,
    sizes=MappingProxyType({"train": 5_101_618, "valid": 399_782, "test": 449_945}),
    sha256=MappingProxyType({
        "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
        "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
        "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
    }),
    download=DownloadSpec(
        url="https://github.com/timbmg/RNNLM/raw/4e5bddfd042beb3e1aa1f282954cc31567294c83/data/ptb.zip",
        sha256="6957baa63e145820032f12d3f1e6f4ba71789c3f5dbf289902bc3f0a96beef7a",
        members=MappingProxyType({s: f"ptb.{s}.txt" for s in SPLITS}),
    ),
))

register_corpus(CorpusSpec(
    name="wikitext-2",
    files=SPLIT_FILES,
    sizes=MappingProxyType({"train": 10_797_148, "valid": 1_121_681, "test": 1_256_449}),
    sha256=MappingProxyType({
        "train": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
        "valid": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
        "test": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
    }),
    download=DownloadSpec(
        url="https://wikitext.smerity.com/wikitext-2-v1.zip",
        sha256=None,
        members=MappingProxyType({s: f"wiki.{s}.tokens" for s in SPLITS}),
    ),
))


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: ``data_dir``, else ``$ESS_DATA_DIR``, else ``./data``."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(data_dir).expanduser()


def generated_root() -> Path:
    """Where generated corpora live: ``$ESS_GENERATED_DIR``, else ``$XDG_CACHE_HOME/ess/corpora``
    (``~/.cache/ess/corpora``). Never the data directory, which may be read-only and shared."""
    explicit = os.environ.get(GENERATED_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache).expanduser() / "ess" / "corpora"


def corpus_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """``<data_dir>/<name>``, the directory holding the split files of corpus ``name``.

    For a generated corpus: ``<generated_root()>/<name>-<fingerprint>``, whatever ``data_dir``.
    Nothing is generated here.
    """
    spec = CORPORA.get(name)
    if spec is not None and spec.generator is not None:
        return generated_root() / f"{name}-{spec.generator.fingerprint()}"
    return resolve_data_dir(data_dir) / name
