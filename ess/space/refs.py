"""The one resolver of a genotype reference (built-in name, JSON text, description or file)."""

from __future__ import annotations

import os
from pathlib import Path

from ess.errors import GenotypeError, decode_utf8
from ess.space.description import looks_like_description, parse_description
from ess.space.genotype import BUILTINS, ESSGenotype, builtin_name, parse_genotype_json


def load_genotype(ref: ESSGenotype | str | os.PathLike) -> ESSGenotype:
    """The one resolver of a genotype reference: an :class:`ESSGenotype` as it is, a built-in by name
    (case-insensitive: ``darts_v2``), genotype JSON text (``{...}``), its description
    (``intra[...] history[...] input[...]``, :func:`ess.space.description.describe`), or a genotype JSON file."""
    if isinstance(ref, ESSGenotype):
        return ref
    name = builtin_name(ref)
    if name is not None:
        return BUILTINS[name]
    key = str(ref)
    if isinstance(ref, str) and key.lstrip().startswith("{"):
        return parse_genotype_json(key, "genotype JSON text")
    if isinstance(ref, str) and looks_like_description(key):
        return parse_description(key.strip(), "genotype description")
    path = Path(key)
    if not os.path.exists(path):  # os.path: a name the OS refuses (too long, NUL byte) reads as missing
        raise GenotypeError(
            f"{key}: no such genotype file and not a built-in (built-ins: {', '.join(BUILTINS)})")
    if not os.path.isfile(path):
        raise GenotypeError(f"{path}: cannot read genotype (not a regular file)")
    try:
        data = path.read_bytes()
    except (OSError, ValueError) as err:
        raise GenotypeError(f"{path}: cannot read genotype ({getattr(err, 'strerror', None) or err})") from None
    return parse_genotype_json(decode_utf8(data, f"{path}: cannot read genotype", GenotypeError), str(path))


__all__ = ["load_genotype"]
