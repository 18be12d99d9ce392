"""``python -m ess.data {list,stats,verify,download,generate}``: inspect, fetch and generate the corpora.

Data problems print one ``error: ...`` line naming the file and exit with status 2. Generated corpora
(``planted``, ``planted-k3``, ``planted-k4``) are generated on first use; ``generate`` does it on purpose
(with other parameters or into another directory if asked) and prints the exact perplexity floor.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path

from ess.cli import run_main
from ess.data.corpus import load_corpus, verify_corpus
from ess.data.download import download_corpus
from ess.data.generated import ensure_generated, read_manifest, write_generated
from ess.data.planted import PlantedParams
from ess.data.registry import CORPORA, SPLITS, corpus_dir, get_spec
from ess.errors import DataError


def format_stats(name: str, data_dir: str | None = None) -> str:
    """One line of token counts per split (``<eos>`` included) and the vocabulary size."""
    corpus = load_corpus(name, data_dir)
    counts = " / ".join(f"{split} {corpus.split(split).numel():,}" for split in SPLITS)
    line = f"{name}: {counts} tokens, vocabulary {len(corpus.vocab):,}"
    spec = get_spec(name)
    if spec.generator is not None:
        line += f"\n{name}: {spec.generator.summary(read_manifest(spec.generator, corpus.path))}"
    return line


def _cmd_list(args: argparse.Namespace) -> None:
    for name in sorted(CORPORA):
        spec = CORPORA[name]
        root = corpus_dir(name, args.data_dir)
        present = all((root / spec.files[s]).is_file() for s in SPLITS)
        if spec.generator is not None:
            source = f"generated on first use (python -m ess.data generate {name})"
        else:
            source = spec.download.url if spec.download is not None else "no download source"
        print(f"{name}\t{'present' if present else 'missing'} in {root}\t{source}")


def _cmd_stats(args: argparse.Namespace) -> None:
    print(format_stats(args.name, args.data_dir))


def _cmd_verify(args: argparse.Namespace) -> None:
    spec = get_spec(args.name)
    for split, (path, size, digest) in verify_corpus(args.name, args.data_dir).items():
        if spec.generator is not None:
            checked = f"sha256 ok (as in {spec.generator.manifest})"
        else:
            checked = "sha256 ok" if spec.digest(split) else "no registered sha256"
        print(f"{split}\t{path}\t{size:,} bytes\t{digest}\t{checked}")


def _cmd_download(args: argparse.Namespace) -> None:
    if get_spec(args.name).generator is not None:
        root, _ = ensure_generated(args.name)
        print(f"{args.name}: generated, not downloaded: files in {root}")
        return
    target = download_corpus(args.name, args.data_dir, url=args.url, progress=not args.quiet, force=args.force)
    print(f"{args.name}: verified files in {target}")


_PARAM_FLAGS = {f.name: "--" + f.name.replace("_", "-") for f in fields(PlantedParams)}


def _cmd_generate(args: argparse.Namespace) -> None:
    spec = get_spec(args.name)
    if not isinstance(spec.generator, PlantedParams):
        raise DataError(f"corpus {args.name!r} is not generated (generated corpora: "
                        f"{', '.join(n for n, s in sorted(CORPORA.items()) if s.generator is not None)})")
    changes = {name: getattr(args, name) for name in _PARAM_FLAGS if getattr(args, name) is not None}
    params = replace(spec.generator, **changes)
    if args.out is None and params == spec.generator:
        target, manifest = ensure_generated(args.name)
    else:
        target = Path(args.out) if args.out is not None else corpus_dir(args.name).parent / \
            f"{args.name}-{params.fingerprint()}"
        write_generated(params, args.name, target)
        manifest = read_manifest(params, target)
    print(f"{args.name}: {params.summary(manifest)}")
    print(f"{args.name}: files in {target}")
    if params != spec.generator:
        print(f"{args.name}: note: not the registered parameters; --dataset {args.name} uses {corpus_dir(args.name)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ess.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data_dir_help = "directory holding <name>/{train,valid,test}.txt (default: $ESS_DATA_DIR, else ./data)"

    p = sub.add_parser("list", help="registered corpora and whether their files are present")
    p.add_argument("--data-dir", help=data_dir_help)
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("stats", help="tokens per split (with <eos>) and vocabulary size")
    p.add_argument("name")
    p.add_argument("--data-dir", help=data_dir_help)
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser("verify", help="check each file's size, UTF-8 text and sha256")
    p.add_argument("name")
    p.add_argument("--data-dir", help=data_dir_help)
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("download", help="fetch the canonical archive, verify it and install the splits")
    p.add_argument("name")
    p.add_argument("--data-dir", help=data_dir_help)
    p.add_argument("--url", help="archive URL or local path instead of the registered source")
    p.add_argument("--force", action="store_true", help="download even if verified files are present")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("generate", help="generate a planted corpus (seeded) and print its exact perplexity floor")
    p.add_argument("name", help="a generated corpus: planted, planted-k3, planted-k4")
    p.add_argument("--out", help="write {train,valid,test}.txt and planted.json into this new directory "
                                 "(default: the generated-corpus cache, $ESS_GENERATED_DIR or ~/.cache/ess/corpora)")
    kinds = {"eps": float, "p_switch": float}
    helps = {"k": "the next token depends on x_{t-k}", "switches": "switch tokens S (<eos> is switch 0)",
             "content": "content tokens C", "eps": "noise: probability of a uniform content token",
             "p_switch": "probability of a switch token at each step", "seed": "seed of the permutations and samples"}
    for name, flag in _PARAM_FLAGS.items():
        p.add_argument(flag, dest=name, type=kinds.get(name, int), default=None,
                       help=helps.get(name, "target length of the split in tokens (<eos> included)"))
    p.set_defaults(func=_cmd_generate)
    return parser


@run_main
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
