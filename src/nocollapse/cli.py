"""The command line: ``nocollapse train | eval | embed | report | config | download``.

User errors (bad data, bad settings) print one clear message and exit with status 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nocollapse.errors import TrainingStopped, UserError

EXAMPLES = """examples:
  nocollapse train                                  BYOL + uniformity on Fashion-MNIST, the default preset (under 15 min on 2 CPU cores with bf16 units)
  nocollapse train optim.epochs=30 run.name=long    any setting as key=value (see `nocollapse config`)
  nocollapse train --preset fmnist-gpu              ResNet-18 recipe for a GPU
  nocollapse train data.dataset=image-folder --data-dir DIR data.image_size=64
                                                    your own images: DIR/unlabeled/** (+ train/<class>/, test/<class>/ to score)
  nocollapse train --resume run.name=long           continue an interrupted run exactly where its checkpoint left it
  nocollapse eval runs/fmnist-byol+uniformity-seed0 re-evaluate a saved run
  nocollapse eval RUN eval.label_fractions=0.01,0.1 eval.finetune_epochs=3 eval.transfer=cifar10:DIR
                                                    as the papers report it: few labels, fine-tuning, other datasets
  nocollapse eval --encoder FILE.safetensors --dataset fashion-mnist --out runs/scored
                                                    score an encoder no run trained, beside the same baselines
  nocollapse embed runs/fmnist-byol+uniformity-seed0 photos/ --out emb.npy
                                                    embeddings of new images (files, folders, fashion-mnist:test), one row each
  nocollapse report runs/a runs/b --out cmp/        one HTML page comparing runs (plots, tables, baselines)
  nocollapse config --preset cifar10                every setting of a preset, with what it does
  nocollapse download fashion-mnist --to data/      fetch the official files (SHA-256 verified)
"""


def build_parser() -> argparse.ArgumentParser:
    from nocollapse.config import PRESETS

    parser = argparse.ArgumentParser(prog="nocollapse", description="Non-contrastive self-supervised learning that does not collapse.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser("train", help="train a method, then evaluate it beside baselines",
                                description="Train, checkpoint every epoch, then print the evaluation table (kNN, linear probe; raw pixels and random encoder beside). "
                                            "Settings are key=value overrides on a preset; `nocollapse config` lists them all.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.5 augment.crop_scale=0.2,1.0")
    train.add_argument("--preset", default="fmnist", choices=sorted(PRESETS), help="named starting configuration (default: fmnist)")
    train.add_argument("--resume", action="store_true", help="continue the run in out_dir/name from its last checkpoint")
    train.add_argument("--data-dir", help="where the dataset files are (same as data.data_dir=...)")
    train.add_argument("--device", help="auto | cpu | cuda | cuda:N (same as run.device=...)")
    train.add_argument("--compile", action="store_true", help="torch.compile the method (same as run.compile=true; worth it on a GPU)")
    train.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    train.add_argument("--no-report", action="store_true", help="do not write the HTML report (RUN_DIR/report/index.html) at the end")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    evaluate = commands.add_parser("eval", help="re-evaluate a saved run, or score any encoder",
                                   description="Evaluate RUN_DIR/encoder.pt with the run's own settings (eval.* overrides allowed), or with "
                                               "--encoder PATH --dataset NAME an encoder no run trained (a run directory, an "
                                               "encoder.safetensors, or a .pt state dict beside its config.json), beside the same baselines.")
    evaluate.add_argument("run_dir", type=Path, nargs="?", help="a run directory (leave out with --encoder)")
    evaluate.add_argument("--encoder", type=Path, help="score this encoder instead of a run's")
    evaluate.add_argument("--dataset", help="with --encoder: the dataset to score it on (fashion-mnist, cifar10, cifar100, stl10, image-folder)")
    evaluate.add_argument("--data-dir", help="with --encoder: where the dataset's files are")
    evaluate.add_argument("--out", type=Path, help="with --encoder: the directory for config.json, eval.json and the report "
                                                   "(default runs/eval-<encoder name>)")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value", help="eval.* or data.data_dir overrides, e.g. eval.knn_k=5,20,200, "
                                                                                   "eval.label_fractions=0.01,0.1, eval.shots=1,5,10, eval.finetune_epochs=3, eval.transfer=NAME[:DIR],...")
    evaluate.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    evaluate.add_argument("--no-report", action="store_true", help="do not rewrite the run's HTML report")

    embed = commands.add_parser("embed", help="write the embeddings of images, folders or dataset splits to a file",
                                description="One embedding per image, with the evaluation's preprocessing (decode, centre crop and resize "
                                            "to the run's image size, its channels and normalisation), row by row beside its source and label. "
                                            "The suffix of --out picks the format: .npy (with a .txt index), .safetensors, or .parquet "
                                            "(needs pyarrow).")
    embed.add_argument("model", type=Path, metavar="RUN_DIR", help="a run directory, or an encoder.safetensors")
    embed.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or dataset splits such as fashion-mnist:test")
    embed.add_argument("--out", required=True, type=Path, help="the output file: .npy, .safetensors or .parquet")
    embed.add_argument("--what", default="features", choices=("features", "projections"),
                       help="the encoder's output (default) or the online projection head's (needs RUN_DIR with its checkpoint)")
    embed.add_argument("--batch-size", type=int, default=256)
    embed.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    embed.add_argument("--data-dir", help="where the dataset files of a dataset:split input are")
    embed.add_argument("--skip-unreadable", action="store_true", help="leave out files that cannot be decoded, listed in OUT_STEM.skipped.txt")
    embed.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    embed.add_argument("--quiet", action="store_true", help="no progress bar")

    export = commands.add_parser("export", help="write the trained encoder as ONNX or TorchScript, for serving",
                                 description="The encoder alone, input 'images' (B, C, S, S) float32 already preprocessed, output "
                                             "'features'; the preprocessing contract is in the file's metadata. ONNX needs `pip install onnx`.")
    export.add_argument("model", type=Path, metavar="RUN_DIR", help="a run directory, or an encoder.safetensors")
    export.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    export.add_argument("--out", required=True, type=Path, help="the file to write")
    export.add_argument("--force", action="store_true", help="overwrite --out if it exists")

    report = commands.add_parser("report", help="write an HTML page with plots and tables for one or more runs",
                                 description="One self-contained HTML page (PNG plots inline, also saved beside it): loss terms, kNN over "
                                             "epochs, lr and τ, alignment/uniformity/RankMe over epochs, singular spectra, t-SNE maps, and "
                                             "tables of accuracy and geometry beside the raw-pixel and random-encoder baselines. "
                                             "Plots need `pip install 'nocollapse[report]'`.")
    report.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories written by `nocollapse train`")
    report.add_argument("--out", required=True, type=Path, help="directory for index.html and the PNG files")
    report.add_argument("--title", help="page title (default: the run names)")
    report.add_argument("--no-map", action="store_true", help="skip the t-SNE maps (about 12 s per run on 2 CPU cores)")

    config = commands.add_parser("config", help="print every setting of a preset with what it does")
    config.add_argument("overrides", nargs="*", metavar="key=value")
    config.add_argument("--preset", default="fmnist", choices=sorted(PRESETS))
    config.add_argument("--json", action="store_true", help="print the resolved config as JSON")

    download = commands.add_parser("download", help="download a dataset's official files, verified by SHA-256")
    download.add_argument("dataset", help="fashion-mnist | cifar10 | cifar100 | stl10")
    download.add_argument("--to", required=True, type=Path, help="target directory")
    download.add_argument("--mirror", help="base URL of a mirror holding the same files (checked against the same hashes)")
    return parser


def run_train(args: argparse.Namespace) -> None:
    import torch

    from nocollapse.config import resolve_config
    from nocollapse.train.loop import Trainer, resume_config, run_directory

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    if args.device:
        overrides.append(f"run.device={args.device}")
    if args.compile:
        overrides.append("run.compile=true")
    config = resolve_config(args.preset, overrides)
    run_dir = run_directory(config, resuming=args.resume)
    if args.resume:  # the run's own settings; only what cannot change its trajectory may be overridden
        config = resume_config(run_dir, overrides)
    trainer = Trainer(config, run_dir=run_dir, resume=args.resume, progress=not args.quiet)  # a failure here leaves the group at exit (atexit)
    try:
        run_dir = trainer.fit()
        if trainer.dist.enabled:
            torch.distributed.barrier()  # rank 0 finishes later (monitor, checkpoint, encoder): the processes leave together
    except UserError:  # stopped by a fault: the report shows where and why, beside the curves up to it
        if not args.no_report and trainer.dist.is_main:
            write_run_report(trainer.run_dir)
        raise
    finally:
        trainer.close()  # leave the process group now, not at exit: rank 0 goes on to evaluate
    if not trainer.dist.is_main:
        return  # rank 0 evaluates and reports; the other processes are done
    if not args.no_eval:
        from nocollapse.train.evaluation import evaluate_run

        print(f"\nevaluating {run_dir} …")
        try:
            evaluate_run(run_dir, config, train_set=trainer.train_set, test_set=trainer.test_set, progress=not args.quiet)
        except Exception:  # the training is saved: its report still shows it, with what the evaluation got to
            if not args.no_report:
                write_run_report(run_dir)
            raise
    if not args.no_report:
        write_run_report(run_dir)
    print(f"\nrun saved in {run_dir}")


def write_run_report(run_dir: Path) -> None:
    """The run's own report, RUN_DIR/report/index.html. A failure here costs the page, never the run:
    it is reported with the command that retries it."""
    from nocollapse.report import write_report

    try:
        page = write_report([run_dir], run_dir / "report")
    except Exception as error:  # noqa: BLE001 - the run is saved whatever went wrong with its page
        print(f"report: not written ({type(error).__name__}: {error}); retry with "
              f"`nocollapse report {run_dir} --out {run_dir / 'report'}`", file=sys.stderr)
        return
    print(f"report: {page}")


def run_eval(args: argparse.Namespace) -> None:
    from nocollapse.config import set_value, validate
    from nocollapse.train.evaluation import evaluate_run
    from nocollapse.train.loop import load_run_config

    if args.encoder is not None:
        from nocollapse.train.evaluation import evaluate_encoder

        if args.run_dir is not None and "=" in str(args.run_dir):  # argparse gave the first override the RUN_DIR slot
            args.overrides, args.run_dir = [str(args.run_dir), *args.overrides], None
        if args.run_dir is not None or not args.dataset:
            raise UserError("eval --encoder PATH needs --dataset NAME and no RUN_DIR")
        name = args.encoder.parent.name if args.encoder.suffix else args.encoder.name
        out = args.out or Path("runs") / f"eval-{name or 'encoder'}"
        evaluate_encoder(args.encoder, args.dataset, out, data_dir=args.data_dir, overrides=args.overrides, device=args.device)
        if not args.no_report:
            write_run_report(out)
        return
    if args.run_dir is None:
        raise UserError("eval needs RUN_DIR, or --encoder PATH --dataset NAME")
    config = load_run_config(args.run_dir)
    for text in args.overrides:
        key, sep, value = text.partition("=")
        if not sep or not (key.startswith("eval.") or key in ("data.data_dir", "data.cache_dir")):
            raise UserError(f"eval accepts only eval.*, data.data_dir and data.cache_dir overrides as key=value, got {text!r}")
        set_value(config, key, value)
    validate(config)
    try:
        evaluate_run(args.run_dir, config, device=args.device)
    except Exception:  # eval.json holds the parts done before the fault: the report shows them
        if not args.no_report:
            write_run_report(args.run_dir)
        raise
    if not args.no_report:
        write_run_report(args.run_dir)


def run_embed(args: argparse.Namespace) -> None:
    from nocollapse.embed import embed

    embed(args.model, args.inputs, args.out, what=args.what, batch_size=args.batch_size, device=args.device, data_dir=args.data_dir,
          skip_unreadable=args.skip_unreadable, force=args.force, progress=not args.quiet)


def run_export(args: argparse.Namespace) -> None:
    from nocollapse.export import export_encoder

    export_encoder(args.model, args.out, format=args.format, force=args.force)


def run_report(args: argparse.Namespace) -> None:
    from nocollapse.report import write_report

    page = write_report(args.run_dirs, args.out, title=args.title, tsne=not args.no_map)
    print(f"report: {page}")


def run_config(args: argparse.Namespace) -> None:
    from nocollapse.config import describe, resolve_config

    config = resolve_config(args.preset, args.overrides)
    print(config.to_json() if args.json else f"preset {args.preset}:\n{describe(config)}")


def run_download(args: argparse.Namespace) -> None:
    from nocollapse.data import download_dataset

    paths = download_dataset(args.dataset, args.to, base_url=args.mirror)
    print(f"{args.dataset}: {len(paths)} files verified in {args.to}; train with --data-dir {args.to}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # argparse takes one run of positionals: overrides after an option (`train a=1 --data-dir D b=2`)
    # come back unparsed. They are overrides all the same, in the order given.
    args, rest = parser.parse_known_args(argv)
    if rest:
        if not hasattr(args, "overrides") or any(item.startswith("-") or "=" not in item for item in rest):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        args.overrides += rest
    if args.command is None:
        parser.print_help()
        return 0
    handlers = {"train": run_train, "eval": run_eval, "embed": run_embed, "export": run_export, "report": run_report, "config": run_config, "download": run_download}
    try:
        handlers[args.command](args)
    except UserError as error:
        print(f"nocollapse {args.command}: error: {error}", file=sys.stderr)
        return 2
    except TrainingStopped as stop:
        print(f"\nnocollapse {args.command}: {stop}", file=sys.stderr)
        return 143 if stop.signal_name == "SIGTERM" else 130
    except KeyboardInterrupt:
        print(f"\nnocollapse {args.command}: interrupted; the last checkpoint is kept (continue with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
