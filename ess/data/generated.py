"""Generated corpora, written atomically on first use into a cache directory outside the data directory.

A *generated* corpus (a spec with a ``generator``, e.g. :mod:`ess.data.planted`) is never downloaded and
never written into the data directory: it lives in ``$ESS_GENERATED_DIR``, else
``$XDG_CACHE_HOME/ess/corpora`` (``~/.cache/ess/corpora``), as ``<name>-<fingerprint>/`` (the
fingerprint hashes the generator's parameters), whatever ``data_dir`` says. :func:`~ess.data.load_corpus`
and :func:`~ess.data.verify_corpus` generate it on first use, in a temporary directory renamed into place, so
concurrent first uses never see a partial corpus (each may generate; the first rename wins, the
others discard their identical copy). The generator's manifest records each split's size and sha256,
which are then checked like a registered corpus's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

from ess.checkpoint import fsync_dir
from ess.data.registry import GENERATED_DIR_ENV, SPLITS, CorpusGenerator, CorpusSpec, corpus_dir, get_spec
from ess.data.validation import one_line
from ess.errors import DataError


def read_manifest(generator: CorpusGenerator, root: Path) -> dict[str, Any]:
    """The manifest of a generated corpus in ``root``; a :class:`DataError` if unreadable or of other parameters."""
    path = Path(root) / generator.manifest
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        sizes, digests, fingerprint = manifest["bytes"], manifest["sha256"], manifest["fingerprint"]
        if not all(isinstance(sizes[s], int) and isinstance(digests[s], str) for s in SPLITS):
            raise ValueError("bad bytes/sha256 entries")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; {root} is not a complete generated corpus (delete it to "
                        "regenerate)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        reason = one_line(getattr(err, "strerror", None) or err) or type(err).__name__
        raise DataError(f"{path}: unreadable manifest of a generated corpus ({reason}); delete {root} to "
                        "regenerate it") from None
    if fingerprint != generator.fingerprint():
        raise DataError(f"{path}: generated with other parameters (fingerprint {fingerprint}, expected "
                        f"{generator.fingerprint()}); delete {root} or choose another directory")
    return manifest


def write_generated(generator: CorpusGenerator, name: str, target: str | os.PathLike) -> bool:
    """Generate a corpus into ``target`` atomically; False (and nothing done) if it is already there.

    The files are written into a fresh temporary directory beside ``target``, which is then renamed to
    ``target``: another process sees either nothing or the complete corpus. When two processes race,
    the loser's rename fails, it finds the winner's manifest and drops its own copy.
    """
    target = Path(target)
    if (target / generator.manifest).is_file():
        read_manifest(generator, target)  # refuse a directory generated with other parameters
        return False
    parent = target.parent
    hint = f"set ${GENERATED_DIR_ENV} to a writable directory"
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{parent}: cannot create the directory for generated corpus {name!r} "
                        f"({one_line(err.strerror or err)}); {hint}") from None
    tmp = parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        generator.generate(tmp, name)
        fsync_dir(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if (target / generator.manifest).is_file():  # another process won the race
                read_manifest(generator, target)
                return False
            if target.exists():
                raise DataError(f"{target}: exists and is not a generated corpus; remove it or choose "
                                "another directory") from None
            raise
        fsync_dir(parent)
        return True
    except OSError as err:
        raise DataError(f"{target}: cannot write generated corpus {name!r} ({one_line(err.strerror or err)}); "
                        f"{hint}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)




def ensure_generated(name: str) -> tuple[Path, dict[str, Any]]:
    """Generate corpus ``name`` unless present (saying once on stderr where); its directory and manifest."""
    spec = get_spec(name)
    if spec.generator is None:
        raise DataError(f"corpus {name!r} is not a generated corpus")
    root = corpus_dir(name)
    if write_generated(spec.generator, name, root):
        manifest = read_manifest(spec.generator, root)
        print(f"ess.data: generated corpus {name!r} in {root}: {spec.generator.summary(manifest)}",
              file=sys.stderr, flush=True)
        return root, manifest
    return root, read_manifest(spec.generator, root)


def checked_spec(spec: CorpusSpec) -> CorpusSpec:
    """``spec``, or for a generated corpus (generated here if needed) with its manifest's sizes and sha256."""
    if spec.generator is None:
        return spec
    _, manifest = ensure_generated(spec.name)
    return dataclasses.replace(spec, sizes=dict(manifest["bytes"]), sha256=dict(manifest["sha256"]))
