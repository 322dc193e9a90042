"""`distcl` command line: prepare | train | eval | sweep | launch | compare | presets.

Every subcommand that takes a config accepts `--config PRESET_OR_YAML` and `key.sub=value`
overrides; the config is validated before anything expensive starts.
"""

from __future__ import annotations

import argparse
import sys

from distcl.config.schema import ConfigError


def _cmd_prepare(args: argparse.Namespace) -> int:
    from distcl.data.beton import prepare

    if args.dataset == "wordnet":
        return _prepare_wordnet(args)
    splits = args.split or ["train", "test"]
    for split in splits:
        path, meta, written = prepare(
            args.dataset,
            split,
            root=args.root,
            out=args.out,
            force=args.force,
            download=args.download,
            write_mode=args.write_mode,
            max_resolution=args.max_resolution,
            jpeg_quality=args.jpeg_quality,
            num_workers=args.workers,
        )
        state = "wrote" if written else "valid, reused"
        print(
            f"{path}: {meta['count']} images, {meta['resolution']} px, "
            f"{meta['channels']} channel(s) ({state})"
        )
    return 0


def _prepare_wordnet(args: argparse.Namespace) -> int:
    from distcl.data.text_beton import prepare_wordnet, read_text_meta

    paths = prepare_wordnet(args.out, root=args.root or None, force=args.force)
    for path in paths.values():
        meta = read_text_meta(path)
        print(f"{path}: {meta['count']} text pairs, {meta['max_len']} byte tokens per text")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from distcl.config import schema as config
    from distcl.job.driver import fit

    cfg = config.load(args.config, args.overrides)
    fit(cfg, resume=args.resume, summary_json=args.summary_json)
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from distcl.config.schema import preset_names

    print("\n".join(preset_names()))
    return 0


def _cmd_launch(argv: list[str]) -> int:
    from distcl.launch.submit import main as launch_main

    return launch_main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distcl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="write .beton files for a dataset (once; reused if valid)")
    p.add_argument(
        "--dataset",
        default="fashion_mnist",
        help="fashion_mnist | cifar10 | cifar100 | stl10 | imagefolder | synthetic | wordnet",
    )
    p.add_argument(
        "--split",
        action="append",
        help="split(s) to write (default: train, test; stl10 also unlabeled, train+unlabeled)",
    )
    p.add_argument(
        "--root", default="", help="raw dataset folder (default: the usual place, see README)"
    )
    p.add_argument("--out", default="data", help="folder for the .beton files")
    p.add_argument("--force", action="store_true", help="rewrite even when a valid file exists")
    p.add_argument(
        "--download", action="store_true", help="fetch missing CIFAR/STL-10 files into --root"
    )
    p.add_argument(
        "--write-mode",
        "--storage",
        default="raw",
        choices=["raw", "jpeg", "jpg", "smart", "proportion"],
        help="image storage (data.storage in a config)",
    )
    p.add_argument("--max-resolution", type=int, default=0, help="resize longer side (0 = keep)")
    p.add_argument("--jpeg-quality", type=int, default=90, help="for jpeg/smart/proportion")
    p.add_argument("--workers", type=int, default=2, help="writer processes")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("train", help="train with Ray Train, log to MLflow, evaluate")
    p.add_argument(
        "--config", default=None, help="preset name or YAML path (default: fashion_mnist_simclr)"
    )
    p.add_argument("--resume", action="store_true", help="continue the newest run of this name")
    p.add_argument("--summary-json", default=None, help="write final figures to this JSON file")
    p.add_argument("overrides", nargs="*", help="key.sub=value, e.g. train.epochs=5")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("presets", help="list the shipped config presets")
    p.set_defaults(func=_cmd_presets)
    sub.add_parser(
        "launch", help="submit distcl train to a Ray cluster (see distcl launch -h)", add_help=False
    )
    for name, text in (
        ("eval", "evaluate a finished run's encoder again (see distcl eval -h)"),
        ("compare", "tabulate runs against their baselines (see distcl compare -h)"),
        ("sweep", "Ray Tune sweep over a tune/*.yaml space (see distcl sweep -h)"),
    ):
        sub.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["launch"]:
        return _cmd_launch(argv[1:])
    if argv[:1] == ["sweep"]:
        from distcl.sweep.run import main as sweep_main

        return sweep_main(argv[1:])
    if argv[:1] == ["eval"]:
        from distcl.evaluation.cli import main as eval_main

        return eval_main(argv[1:])
    if argv[:1] == ["compare"]:
        from distcl.report.compare import main as compare_main

        return compare_main(argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse ends a nargs="*" positional at the first option, so overrides after
    # `--summary-json F` come back unparsed: they are overrides all the same.
    stray = [a for a in extra if a.startswith("-") or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"distcl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distcl: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from distcl.data.sources import DataError

        if isinstance(exc, DataError | FileNotFoundError | PermissionError):
            print(f"distcl: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
