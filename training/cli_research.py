"""``hipfuse-train ablate`` and ``report``: modality ablation and the HTML report.

The parsers are added by :func:`hipfuse.training.cli.build_parser`; the
runners import the heavy modules only when they run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hipfuse.training.cli import (
    add_preset_and_mode,
    add_split_options,
    add_training_options,
)


def add_ablate(commands: argparse._SubParsersAction) -> None:
    """Add the ``ablate`` subcommand."""
    command = commands.add_parser(
        "ablate",
        help="train and compare all seven modality subsets on one split",
        description=(
            "Train and evaluate the model on every non-empty subset of radiograph, CT and "
            "text, by masking the other modalities at training and test time, with the same "
            "split, seed and crops. Prints the comparison table and writes ablation.csv and "
            "ablation.json to --out."
        ),
    )

    command.add_argument("--manifest", type=Path, required=True, help="cohort manifest file")

    command.add_argument("--out", type=Path, required=True, help="output folder (created)")

    # Two-stage by default: seven subsets trained end to end take seven times as long.
    add_preset_and_mode(command, default_mode="two_stage")
    add_split_options(command)

    add_training_options(command)


def add_report(commands: argparse._SubParsersAction) -> None:
    """Add the ``report`` subcommand."""
    command = commands.add_parser(
        "report",
        help="write one self-contained HTML report of an evaluation",
        description=(
            "Write one HTML file that opens offline: ROC, decision and reliability curves, "
            "confusion matrix, ablation table, modality attention, Grad-CAM gallery and a "
            "model card."
        ),
    )

    command.add_argument(
        "--evaluation",
        type=Path,
        required=True,
        help="folder written by hipfuse-train evaluate --bundle (metrics.json and more)",
    )

    command.add_argument(
        "--ablation", type=Path, help="folder written by hipfuse-train ablate (default: none)"
    )

    command.add_argument("--bundle", type=Path, required=True, help="bundle folder evaluated")

    command.add_argument("--out", type=Path, required=True, help="HTML file to write")


def run_ablate(args: argparse.Namespace) -> int:
    """Train every modality subset on one split and print the comparison table."""
    from hipfuse.inference.model.config import IntendedUse, ModelPreset, make_bundle_config
    from hipfuse.training.ablation import run_ablation
    from hipfuse.training.ablation_table import ablation_table, format_table, write_ablation
    from hipfuse.training.cli_commands import CommandError, augment_settings
    from hipfuse.training.cohort import load_cohort
    from hipfuse.training.fit import default_work_dir

    if (args.out / "ablation.json").exists() and not (args.overwrite or args.resume):
        raise CommandError(
            f"{args.out / 'ablation.json'} already exists: choose another --out or pass --overwrite"
        )
    cohort = load_cohort(args.manifest)
    config = make_bundle_config(
        ModelPreset(args.preset), name="ablation", version="0", intended_use=IntendedUse.RESEARCH
    )
    work_dir = args.work_dir or default_work_dir(args.out)
    runs = run_ablation(
        cohort,
        config,
        work_dir,
        mode=args.mode,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        patience=args.patience,
        resume=args.resume,
        device=args.device,
        cache_dir=args.cache_dir,
        test_fraction=args.test_fraction,
        validation_fraction=args.validation_fraction,
        augment=augment_settings(args),
        workers=args.workers,
        progress=not args.no_progress,
    )
    table = ablation_table(runs, n_bootstrap=args.bootstrap, seed=args.seed)
    written = write_ablation(table, runs, args.out)
    print(format_table(table))
    print(f"written: {', '.join(str(path) for path in written)}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    """Write the self-contained HTML report of an evaluation folder."""
    from hipfuse.training.report import write_report

    path = write_report(args.evaluation, args.bundle, args.out, ablation_dir=args.ablation)
    print(path)
    return 0
