"""``hipfuse-train``: simulate, train, build the demo bundle, evaluate, ablate, report.

Heavy modules (torch, transformers, the simulator) are imported only after the
arguments are parsed, so ``--help`` and argument errors are instant. The
defaults shown in the help are the ones passed to :func:`hipfuse.training.fit.fit`.

Under ``torchrun --nproc_per_node=N`` the ``fit`` command trains with
DistributedDataParallel; only rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_INPUT_ERROR = 2
EXIT_BUNDLE_ERROR = 3

DEFAULT_EPOCHS = 30
DEFAULT_BATCH_SIZE = 16
DEFAULT_LR = 1e-3
DEFAULT_WEIGHT_DECAY = 1e-4
DEFAULT_PATIENCE = 8
DEFAULT_SEED = 0
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_VALIDATION_FRACTION = 0.2
DEFAULT_MODALITY_DROPOUT = 0.25
DEFAULT_BOOTSTRAP = 1000
DEFAULT_SIMULATED_PATIENTS = 100
DEFAULT_ZH_FRACTION = 0.5
DEFAULT_POINTING_TOLERANCE_MM = 0.0
DEFAULT_GALLERY_PER_CLASS = 2

# The demo bundle: enough simulated patients for a stable validation AUC, few
# enough epochs to finish in minutes on two CPU cores.
DEMO_PATIENTS = 100
DEMO_EPOCHS = 30
DEMO_BATCH_SIZE = 16
DEMO_PATIENCE = 8
DEMO_NAME = "hipfuse-demo"
DEMO_VERSION = "0.1.0"
DEMO_ZH_FRACTION = 0.5


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with its six subcommands."""
    parser = argparse.ArgumentParser(
        prog="hipfuse-train",
        description=(
            "Simulate cohorts, train hip classifier bundles on cohort manifests, build "
            "the demo bundle, evaluate bundles or prediction files, compare modality "
            "subsets, and write HTML reports."
        ),
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        help="log level: DEBUG, INFO, WARNING or ERROR (default: INFO)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_simulate(commands)
    _add_fit(commands)
    _add_demo_bundle(commands)
    _add_evaluate(commands)
    # Imported here because that module reads this one's defaults.
    from hipfuse.training.cli_research import add_ablate, add_report

    add_ablate(commands)
    add_report(commands)
    return parser


def _add_simulate(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "simulate",
        help="write a simulated cohort (DICOM radiographs and CT, notes, manifest)",
        description="Write a simulated cohort with a manifest.csv in --out.",
    )

    command.add_argument("--out", type=Path, required=True, help="output folder (created)")

    command.add_argument(
        "--patients",
        type=int,
        default=DEFAULT_SIMULATED_PATIENTS,
        help=f"patients to simulate, two hips each (default: {DEFAULT_SIMULATED_PATIENTS})",
    )

    command.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default: {DEFAULT_SEED})"
    )

    command.add_argument(
        "--zh-fraction",
        type=float,
        default=DEFAULT_ZH_FRACTION,
        help="fraction of patients whose notes are written in Chinese, 0 to 1 "
        f"(default: {DEFAULT_ZH_FRACTION})",
    )


def add_training_options(command: argparse.ArgumentParser) -> None:
    """Add the options every training command shares (epochs, optimiser, devices, caches)."""
    command.add_argument(
        "--epochs",
        type=int,
        default=DEFAULT_EPOCHS,
        help=f"maximum epochs, early stopping may end sooner (default: {DEFAULT_EPOCHS})",
    )

    command.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="hips per optimisation step, summed over all processes "
        f"(default: {DEFAULT_BATCH_SIZE})",
    )

    command.add_argument(
        "--lr", type=float, default=DEFAULT_LR, help=f"AdamW learning rate (default: {DEFAULT_LR})"
    )

    command.add_argument(
        "--weight-decay",
        type=float,
        default=DEFAULT_WEIGHT_DECAY,
        help=f"AdamW decoupled weight decay (default: {DEFAULT_WEIGHT_DECAY})",
    )

    command.add_argument(
        "--patience",
        type=int,
        default=DEFAULT_PATIENCE,
        help="epochs without a better validation macro AUC before stopping "
        f"(default: {DEFAULT_PATIENCE})",
    )

    command.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help="seed of splits, initialisation, shuffling and augmentation "
        f"(default: {DEFAULT_SEED})",
    )

    command.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default=None,
        help="device to train on (default: cuda when available, else cpu)",
    )

    command.add_argument(
        "--work-dir",
        type=Path,
        help="folder for checkpoints, caches and evaluations (default: <out>.work beside --out)",
    )

    command.add_argument(
        "--cache-dir",
        type=Path,
        help="crop and text-embedding cache, shareable between runs (default: <work-dir>/cache)",
    )

    command.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes that read and crop images (default: 1)",
    )

    command.add_argument(
        "--modality-dropout",
        type=float,
        default=DEFAULT_MODALITY_DROPOUT,
        help="probability of masking each present modality of a training hip, 0 to 1; one "
        f"modality is always kept (default: {DEFAULT_MODALITY_DROPOUT})",
    )

    command.add_argument(
        "--no-augment",
        action="store_true",
        help="turn off image zoom and intensity jitter (default: on in end_to_end mode)",
    )

    command.add_argument(
        "--bootstrap",
        type=int,
        default=DEFAULT_BOOTSTRAP,
        help=f"patient bootstrap resamples for metric intervals (default: {DEFAULT_BOOTSTRAP})",
    )

    command.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint in the work folder (default: start afresh)",
    )

    command.add_argument(
        "--overwrite", action="store_true", help="replace an existing bundle folder (default: no)"
    )

    command.add_argument(
        "--no-progress", action="store_true", help="hide progress bars (default: shown)"
    )


def _add_fit(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "fit",
        help="train a bundle on a cohort manifest",
        description=(
            "Train a bundle on a cohort manifest (CSV, or Parquet with pyarrow). Runs under "
            "torchrun for data-parallel training."
        ),
    )

    command.add_argument("--manifest", type=Path, required=True, help="cohort manifest file")

    command.add_argument("--out", type=Path, required=True, help="bundle folder to write")

    add_preset_and_mode(
        command, default_mode="end_to_end", preset_note="; ignored with --init-from"
    )

    command.add_argument(
        "--init-from",
        type=Path,
        help="bundle whose configuration and weights start the training (default: random "
        "initialisation)",
    )

    command.add_argument("--name", default="hipfuse", help="bundle name (default: hipfuse)")

    command.add_argument("--version", default="0.1.0", help="bundle version (default: 0.1.0)")

    command.add_argument(
        "--intended-use",
        choices=["demo", "research", "clinical"],
        default="research",
        help="intended use written into the bundle and every result (default: research)",
    )

    command.add_argument(
        "--external-centre",
        action="append",
        default=[],
        metavar="CENTRE",
        help="centre evaluated as external and never trained on; repeat for several "
        "(default: none)",
    )

    add_split_options(command)
    add_training_options(command)


def add_preset_and_mode(
    command: argparse.ArgumentParser, *, default_mode: str, preset_note: str = ""
) -> None:
    """Add ``--preset`` and ``--mode``, shared by ``fit`` and ``ablate``."""
    command.add_argument(
        "--preset",
        choices=["demo", "default"],
        default="default",
        help=f"architecture and crop preset{preset_note} (default: default)",
    )

    command.add_argument(
        "--mode",
        choices=["end_to_end", "two_stage"],
        default=default_mode,
        help="end_to_end trains every layer; two_stage freezes the image encoders and trains "
        f"the fusion head on cached features (default: {default_mode})",
    )


def add_split_options(command: argparse.ArgumentParser) -> None:
    """Add the split fractions used when a manifest has no split column."""
    command.add_argument(
        "--test-fraction",
        type=float,
        default=DEFAULT_TEST_FRACTION,
        help="fraction of patients in the test split when the manifest has no split column "
        f"(default: {DEFAULT_TEST_FRACTION})",
    )

    command.add_argument(
        "--validation-fraction",
        type=float,
        default=DEFAULT_VALIDATION_FRACTION,
        help="fraction of patients in the validation split when the manifest has no split "
        f"column (default: {DEFAULT_VALIDATION_FRACTION})",
    )


def _add_demo_bundle(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "demo-bundle",
        help="simulate a cohort and train the demo bundle (not for clinical use)",
        description=(
            "Simulate a cohort and train the demo preset end to end on it. The bundle's "
            "intended use is demo."
        ),
    )

    command.add_argument("--out", type=Path, required=True, help="bundle folder to write")

    command.add_argument(
        "--patients",
        type=int,
        default=DEMO_PATIENTS,
        help=f"simulated patients, two hips each (default: {DEMO_PATIENTS})",
    )

    command.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default: {DEFAULT_SEED})"
    )

    command.add_argument(
        "--epochs",
        type=int,
        default=DEMO_EPOCHS,
        help=f"maximum epochs (default: {DEMO_EPOCHS})",
    )

    command.add_argument(
        "--work-dir",
        type=Path,
        help="keep the simulated cohort, caches and evaluations here (default: a temporary "
        "folder, deleted afterwards)",
    )

    command.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default=None,
        help="device to train on (default: cuda when available, else cpu)",
    )

    command.add_argument(
        "--overwrite", action="store_true", help="replace an existing bundle folder (default: no)"
    )

    command.add_argument(
        "--no-progress", action="store_true", help="hide progress bars (default: shown)"
    )


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "evaluate",
        help="AUC with DeLong and bootstrap intervals, calibration, decision curves, Grad-CAM",
        description=(
            "Evaluate a bundle on a cohort manifest (--bundle and --manifest), or "
            "evaluate and compare the models of a predictions CSV (--predictions). With a "
            "bundle, also write modality attention weights, a Grad-CAM gallery, and Grad-CAM "
            "localisation figures when the manifest has lesion mask columns."
        ),
    )

    command.add_argument(
        "--bundle", type=Path, help="bundle folder to evaluate, with --manifest (no default)"
    )

    command.add_argument(
        "--manifest", type=Path, help="cohort manifest to evaluate on, with --bundle (no default)"
    )

    command.add_argument(
        "--split",
        choices=["train", "validation", "test", "external"],
        help="evaluate only the hips of this split of the manifest (default: every hip)",
    )

    command.add_argument(
        "--predictions",
        type=Path,
        help="CSV with label, patient_id, prob_<class> columns (and model, case_id to "
        "compare several models); instead of --bundle and --manifest (no default)",
    )

    command.add_argument("--out", type=Path, required=True, help="output folder (created)")

    command.add_argument(
        "--bootstrap",
        type=int,
        default=DEFAULT_BOOTSTRAP,
        help=f"patient bootstrap resamples (default: {DEFAULT_BOOTSTRAP})",
    )

    command.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"bootstrap seed (default: {DEFAULT_SEED})"
    )

    command.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default=None,
        help="device to run the bundle on (default: cuda when available, else cpu)",
    )

    command.add_argument(
        "--cache-dir",
        type=Path,
        help="crop and text-embedding cache (default: <out>/cache)",
    )

    command.add_argument(
        "--pointing-tolerance-mm",
        type=float,
        default=DEFAULT_POINTING_TOLERANCE_MM,
        help="distance in mm by which lesion masks are grown for the Grad-CAM pointing game "
        f"(default: {DEFAULT_POINTING_TOLERANCE_MM:g})",
    )

    command.add_argument(
        "--no-localisation",
        action="store_true",
        help="skip Grad-CAM localisation even when the manifest has lesion mask columns "
        "(default: scored when present)",
    )

    command.add_argument(
        "--gallery-per-class",
        type=int,
        default=DEFAULT_GALLERY_PER_CLASS,
        help="hips per true class rendered as Grad-CAM overlays for the report, 0 for none "
        f"(default: {DEFAULT_GALLERY_PER_CLASS})",
    )


def main(argv: list[str] | None = None) -> int:
    """Run the command; return the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "evaluate":
        if args.predictions is None and (args.bundle is None or args.manifest is None):
            parser.error("evaluate needs --bundle and --manifest, or --predictions")
        if args.predictions is not None and (args.bundle or args.manifest):
            parser.error("give either --predictions or --bundle with --manifest, not both")
    for option in ("manifest", "init_from", "bundle", "predictions", "evaluation", "ablation"):
        path = getattr(args, option, None)
        if path is not None and not path.exists():
            parser.error(f"--{option.replace('_', '-')} {path}: no such file or folder")

    from hipfuse.config.logging import configure_logging

    configure_logging(args.log_level)

    from hipfuse.training import cli_commands, cli_research

    handlers = {
        "simulate": cli_commands.run_simulate,
        "fit": cli_commands.run_fit,
        "demo-bundle": cli_commands.run_demo_bundle,
        "evaluate": cli_commands.run_evaluate,
        "ablate": cli_research.run_ablate,
        "report": cli_research.run_report,
    }
    try:
        return handlers[args.command](args)
    except cli_commands.INPUT_ERRORS as error:
        print(f"hipfuse-train {args.command}: {error}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except cli_commands.BUNDLE_ERRORS as error:
        print(f"hipfuse-train {args.command}: {error}", file=sys.stderr)
        return EXIT_BUNDLE_ERROR


if __name__ == "__main__":
    sys.exit(main())
