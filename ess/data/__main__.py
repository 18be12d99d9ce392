"""``python -m ess.data {list,stats,verify,download}``: inspect and fetch the language-model corpora.

Data problems print one ``error: ...`` line naming the file and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ess.cli import run_main
from ess.data.corpus import CORPORA, SPLITS, corpus_dir, get_spec, load_corpus, verify_corpus
from ess.data.download import download_corpus


def format_stats(name: str, data_dir: str | None = None) -> str:
    """One line of token counts per split (``<eos>`` included) and the vocabulary size."""
    corpus = load_corpus(name, data_dir)
    counts = " / ".join(f"{split} {corpus.split(split).numel():,}" for split in SPLITS)
    return f"{name}: {counts} tokens, vocabulary {len(corpus.vocab):,}"


def _cmd_list(args: argparse.Namespace) -> None:
    for name in sorted(CORPORA):
        spec = CORPORA[name]
        root = corpus_dir(name, args.data_dir)
        present = all((root / spec.files[s]).is_file() for s in SPLITS)
        source = spec.download.url if spec.download is not None else "no download source"
        print(f"{name}\t{'present' if present else 'missing'} in {root}\t{source}")


def _cmd_stats(args: argparse.Namespace) -> None:
    print(format_stats(args.name, args.data_dir))


def _cmd_verify(args: argparse.Namespace) -> None:
    spec = get_spec(args.name)
    for split, (path, size, digest) in verify_corpus(args.name, args.data_dir).items():
        checked = "sha256 ok" if spec.digest(split) else "no registered sha256"
        print(f"{split}\t{path}\t{size:,} bytes\t{digest}\t{checked}")


def _cmd_download(args: argparse.Namespace) -> None:
    target = download_corpus(args.name, args.data_dir, url=args.url, progress=not args.quiet, force=args.force)
    print(f"{args.name}: verified files in {target}")


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
    return parser


@run_main
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
