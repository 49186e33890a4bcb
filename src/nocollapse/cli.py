"""The command line: ``nocollapse train | eval | embed | report | config | download``.

User errors (bad data, bad settings) print one clear message and exit with status 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nocollapse.errors import TrainingStopped, UserError

if TYPE_CHECKING:
    from nocollapse.config import Config

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
  nocollapse sweep --preset fmnist --seeds 0,1,2 optim.lr=0.5,1 --out sweeps/lr
                                                    a grid of settings × seeds, resumable, several runs at once with --jobs
  nocollapse train --config my.toml                 settings from a file (`nocollapse config --save my.toml` writes one)
  nocollapse tune --preset fmnist-byol --trials 20 --budget-epochs 2 --out tune/
                                                    search the recipe with Optuna (pruned trials, best.toml to train)
  nocollapse claims --quick --out claims/           each seed paper's claim in miniature, with a verdict (30 min)
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
    train.add_argument("--preset", choices=sorted(PRESETS), help="named starting configuration (default: the config file's, else fmnist)")
    train.add_argument("--config", type=Path, metavar="FILE", help="settings from a TOML or JSON file (a preset plus keys, as "
                                                                    "`nocollapse config --save` writes); key=value overrides win over it")
    train.add_argument("--resume", action="store_true", help="continue the run in out_dir/name from its last checkpoint")
    train.add_argument("--data-dir", help="where the dataset files are (same as data.data_dir=...)")
    train.add_argument("--device", help="auto | cpu | cuda | cuda:N (same as run.device=...)")
    train.add_argument("--compile", action="store_true", help="torch.compile the method (same as run.compile=true; worth it on a GPU)")
    train.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    train.add_argument("--no-report", action="store_true", help="do not write the HTML report (RUN_DIR/report/index.html) at the end")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    evaluate = commands.add_parser("eval", help="re-evaluate a saved run, or score any encoder",
                                   description="Evaluate RUN_DIR/encoder.pt with the run's own settings (eval.* overrides allowed, but for the monitor's and the online probe's), or with "
                                               "--encoder PATH --dataset NAME an encoder no run trained (a run directory, an "
                                               "encoder.safetensors, or a .pt state dict beside its config.json), beside the same baselines.")
    evaluate.add_argument("run_dir", type=Path, nargs="?", help="a run directory (leave out with --encoder)")
    evaluate.add_argument("--encoder", type=Path, help="score this encoder instead of a run's")
    evaluate.add_argument("--dataset", help="with --encoder: the dataset to score it on (fashion-mnist, cifar10, cifar100, stl10, image-folder)")
    evaluate.add_argument("--data-dir", help="with --encoder: where the dataset's files are")
    evaluate.add_argument("--out", type=Path, help="with --encoder: the directory for config.json, eval.json and the report "
                                                   "(default runs/eval-<encoder name>)")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value", help="eval.*, data.data_dir or data.cache_dir overrides, e.g. eval.knn_k=5,20,200, "
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
    report.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories written by `nocollapse train`, or a "
                                                                                   "directory of them (a sweep's --out): runs that differ only "
                                                                                   "by seed are grouped, mean ± std with Welch's t-test")
    report.add_argument("--out", required=True, type=Path, help="directory for index.html and the PNG files")
    report.add_argument("--title", help="page title (default: the run names)")
    report.add_argument("--no-map", action="store_true", help="skip the t-SNE maps (about 12 s per run on 2 CPU cores)")

    sweep = commands.add_parser("sweep", help="train a grid of settings × seeds, each an ordinary run directory; resumable",
                                description="Every combination of the presets and the listed values, for each seed, trained as "
                                            "`nocollapse train` runs in OUT/<preset>-<method>[-key=value...]-seed<seed>. Run the same "
                                            "command again to skip the finished runs and resume the interrupted ones; a failed run is "
                                            "recorded in OUT/sweep.json (its output in OUT/logs/) and the others go on.",
                                epilog="examples:\n"
                                       "  nocollapse sweep --preset fmnist --seeds 0,1,2 --out sweeps/default\n"
                                       "  nocollapse sweep --preset fmnist-byol --seeds 0,1 optim.lr=0.5,1 augment.crop_scale='0.2,1|0.8,1' --out sweeps/lr\n"
                                       "  nocollapse sweep --preset fmnist-byol,fmnist-wmse2 --seeds 0,1,2 --jobs 2 --out sweeps/methods",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep.add_argument("settings", nargs="*", metavar="key=v1,v2", help="values to sweep (or one value to fix); a key that takes a list "
                                                                         "(augment.crop_scale) separates its values with |")
    sweep.add_argument("--preset", help="one or more presets, comma-separated (default: the --config file's, else fmnist)")
    sweep.add_argument("--seeds", default="0", help="comma-separated run.seed values (default: 0)")
    sweep.add_argument("--out", required=True, type=Path, help="the sweep's directory: its runs, sweep.json and logs/")
    sweep.add_argument("--config", type=Path, metavar="FILE", help="start every run from this TOML or JSON config file")
    sweep.add_argument("--jobs", type=int, default=1, help="runs at once (default 1); the CPU threads are split between them")
    sweep.add_argument("--threads", type=int, help="CPU threads per run (default: the cores divided by --jobs)")
    sweep.add_argument("--no-report", action="store_true", help="no HTML report per run (saves some 15 s a run; "
                                                                 "`nocollapse report OUT` still compares them)")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs and their status, train nothing")

    tune = commands.add_parser("tune", help="search a preset's recipe with Optuna on a short budget, each trial a run",
                               description="Trials of the preset for --budget-epochs each, in OUT/trial<NNN>, until the study holds "
                                           "--trials finished ones. Searched by default: the learning rate (÷4 to ×4), τ_base, the crops' "
                                           "smallest scale, the batch size and the preset's regularizer weights (÷10 to ×10). Trials "
                                           "below the median at an epoch are pruned. The objective: final kNN top-1, or RankMe of the "
                                           "features on data without labels. The best settings go to OUT/best.toml. Needs "
                                           "`pip install 'nocollapse[tune]'`.",
                               epilog="examples:\n"
                                      "  nocollapse tune --preset fmnist-byol --trials 20 --budget-epochs 2 --out tune/fmnist\n"
                                      "  nocollapse tune --preset folder-96 data.data_dir=photos/ --trials 30 --budget-epochs 5 --out tune/photos \\\n"
                                      "      --space optim.lr=0.05:2:log --space 'model.backbone=resnet18|convnet'\n"
                                      "  nocollapse tune ... --storage postgresql+psycopg://user@host/db   (processes on many machines, one study)",
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    tune.add_argument("overrides", nargs="*", metavar="key=value", help="fixed settings for every trial (a key given here is not searched)")
    tune.add_argument("--preset", choices=sorted(PRESETS), help="the recipe to start from (default: the --config file's, else fmnist)")
    tune.add_argument("--config", type=Path, metavar="FILE", help="start from a TOML or JSON config file")
    tune.add_argument("--trials", type=int, required=True, help="finished trials (complete or pruned) the study should hold")
    tune.add_argument("--budget-epochs", type=int, required=True, help="epochs of each trial")
    tune.add_argument("--out", type=Path, required=True, help="the trials' run directories, study.db and best.toml")
    tune.add_argument("--space", action="append", default=[], metavar="KEY=SPEC",
                      help="change the search space: KEY=LOW:HIGH[:log], KEY=A|B|C, or KEY=off (repeatable)")
    tune.add_argument("--objective", default="auto", choices=("auto", "knn", "rankme"),
                      help="auto: kNN where the data has labelled train/ and test/, else RankMe (label-free)")
    tune.add_argument("--storage", help="an Optuna storage URL (default: sqlite:///OUT/study.db); a database server lets many "
                                        "processes and machines share the study")
    tune.add_argument("--study", help="the study's name in the storage (default: the name of OUT)")
    tune.add_argument("--seed", type=int, default=0, help="this process's sampler seed (give each process sharing a study its own)")

    claims = commands.add_parser("claims", help="reproduce each seed paper's headline claim in miniature, with a verdict page",
                                 description="Trains what each claim needs (as a resumable sweep in OUT/runs), then writes OUT/index.html: "
                                             "per claim its verdict (holds, does not hold, or inside the seed spread by Welch's t-test), "
                                             "the figures behind it and the commands that produced them. --quick: 2 seeds at a quarter of "
                                             "the presets' budgets, kNN only (about 30 minutes on 2 CPU cores with bf16 units); without it: "
                                             "3 seeds at their own budgets (some 4 hours there).")
    claims.add_argument("overrides", nargs="*", metavar="key=value", help="settings for every run (e.g. data.data_dir=DIR, run.device=cuda)")
    claims.add_argument("--out", required=True, type=Path, help="the page, claims.json and the runs")
    claims.add_argument("--quick", action="store_true", help="2 seeds, a quarter of each budget, kNN only")
    claims.add_argument("--jobs", type=int, default=1, help="runs at once (the CPU threads split between them)")
    claims.add_argument("--only", help="comma-separated claims to check (byol-collapse, wmse-views, msbreg-terms, uniformity-remedies, "
                                       "kernel-family); default: all")

    config = commands.add_parser("config", help="print every setting of a preset with what it does")
    config.add_argument("overrides", nargs="*", metavar="key=value")
    config.add_argument("--preset", choices=sorted(PRESETS), help="default: the config file's, else fmnist")
    config.add_argument("--config", type=Path, metavar="FILE", help="start from a TOML or JSON config file")
    config.add_argument("--json", action="store_true", help="print the resolved config as JSON")
    config.add_argument("--save", type=Path, metavar="FILE", help="write every setting to FILE (.toml with comments, or .json) "
                                                                   "for `nocollapse train --config FILE`")
    config.add_argument("--force", action="store_true", help="with --save: overwrite FILE")

    download = commands.add_parser("download", help="download a dataset's official files, verified by SHA-256")
    download.add_argument("dataset", help="fashion-mnist | cifar10 | cifar100 | stl10")
    download.add_argument("--to", required=True, type=Path, help="target directory")
    download.add_argument("--mirror", help="base URL of a mirror holding the same files (checked against the same hashes)")
    return parser


def run_train(args: argparse.Namespace) -> None:
    import torch

    from nocollapse.train.loop import Trainer, resume_config, run_directory

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    if args.device:
        overrides.append(f"run.device={args.device}")
    if args.compile:
        overrides.append("run.compile=true")
    config = resolved_config(args, overrides)
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
    from nocollapse.config import TRAINING_EVAL_KEYS, set_value, validate
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
        if key in TRAINING_EVAL_KEYS:
            raise UserError(f"{key} acts while training (the epoch monitor, the online probe), not in the final evaluation: "
                            "`nocollapse eval` cannot change it; set it when training a new run")
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
    from nocollapse.report.html import SEEDS_FILE

    page = write_report(args.run_dirs, args.out, title=args.title, tsne=not args.no_map)
    if (page.parent / SEEDS_FILE).is_file():  # runs that differ only by seed: their statistics, also for a README
        print(f"over seeds ({page.parent / SEEDS_FILE}):\n{(page.parent / SEEDS_FILE).read_text()}")
    print(f"report: {page}")


def resolved_config(args: argparse.Namespace, overrides: list[str]) -> Config:
    """``--preset`` and ``--config`` with ``overrides`` applied: the command line over the file over the preset."""
    from nocollapse.config import resolve_config
    from nocollapse.config_file import config_from_file

    if args.config is not None:
        return config_from_file(args.config, args.preset, overrides)
    return resolve_config(args.preset or "fmnist", overrides)


def run_config(args: argparse.Namespace) -> None:
    from nocollapse.config import describe
    from nocollapse.config_file import write_config_file

    config = resolved_config(args, args.overrides)
    if args.save is not None:
        path = write_config_file(config, args.save, force=args.force)
        print(f"wrote {path}: train with `nocollapse train --config {path}`")
    elif args.json:
        print(config.to_json())
    else:
        print(f"preset {config.preset}:\n{describe(config)}")


def run_sweep(args: argparse.Namespace) -> int:
    from nocollapse.sweep import Sweep, plan_sweep, run_sweep as train_sweep

    presets = [name.strip() for name in (args.preset or "").split(",") if name.strip()]
    try:
        seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    except ValueError:
        raise UserError(f"--seeds {args.seeds!r}: must be comma-separated integers, e.g. 0,1,2") from None
    runs = plan_sweep(presets, seeds, args.settings, args.out, config_file=args.config)
    if args.dry_run:
        sweep = Sweep(runs, args.out)
        for run in runs:
            print(f"{sweep.status[run.name].status:<11} {args.out / run.name}")
        print(f"each: {' '.join(runs[0].command(args.out, resume=False)[2:])} (with its own preset, values, seed and name)")
        return 0
    sweep = train_sweep(runs, args.out, jobs=args.jobs, threads=args.threads, reports=not args.no_report)
    return 1 if any(status.status == "failed" for status in sweep.status.values()) else 0


def run_tune(args: argparse.Namespace) -> None:
    from nocollapse.tune import tune

    tune(args.preset, args.out, trials=args.trials, budget_epochs=args.budget_epochs, overrides=args.overrides, space=args.space,
         storage=args.storage, study_name=args.study, objective=args.objective, seed=args.seed, config_file=args.config)


def run_claims(args: argparse.Namespace) -> None:
    from nocollapse.claims import check_claims

    only = [key.strip() for key in (args.only or "").split(",") if key.strip()]
    check_claims(args.out, quick=args.quick, jobs=args.jobs, overrides=args.overrides, only=only)


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
    handlers = {"train": run_train, "eval": run_eval, "embed": run_embed, "export": run_export, "report": run_report, "sweep": run_sweep, "tune": run_tune, "claims": run_claims,
                "config": run_config, "download": run_download}
    try:
        status = handlers[args.command](args)
    except UserError as error:
        print(f"nocollapse {args.command}: error: {error}", file=sys.stderr)
        return 2
    except TrainingStopped as stop:
        print(f"\nnocollapse {args.command}: {stop}", file=sys.stderr)
        return 143 if stop.signal_name == "SIGTERM" else 130
    except KeyboardInterrupt:
        print(f"\nnocollapse {args.command}: interrupted; the last checkpoint is kept (continue with --resume)", file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
