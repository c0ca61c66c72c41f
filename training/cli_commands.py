"""Implementations of the ``hipfuse-train`` subcommands, imported after argument parsing."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

from hipfuse.inference.model.bundle import BundleError
from hipfuse.inference.types import InputError
from hipfuse.training.checkpoint import CheckpointError
from hipfuse.training.cohort import CohortError
from hipfuse.training.fit import FitError
from hipfuse.training.predictions_io import PredictionsError
from hipfuse.training.report import ReportError
from hipfuse.training.splits import SplitError

log = structlog.get_logger(__name__)


class CommandError(ValueError):
    """An option value that the command cannot use; the message names it and the fix."""


INPUT_ERRORS: tuple[type[Exception], ...] = (
    CommandError,
    CohortError,
    SplitError,
    FitError,
    CheckpointError,
    PredictionsError,
    InputError,
    ReportError,
)
BUNDLE_ERRORS: tuple[type[Exception], ...] = (BundleError,)


def run_simulate(args: argparse.Namespace) -> int:
    """Write a simulated cohort and print the manifest path."""
    manifest = _simulate(args.out, args.patients, args.seed, args.zh_fraction)
    print(manifest)
    return 0


def _simulate(out_dir: Path, patients: int, seed: int, zh_fraction: float) -> Path:
    from hipfuse.training.simulate import simulate_cohort

    if patients < 1:
        raise CommandError(f"--patients is {patients}: simulate at least 1 patient")
    if not 0.0 <= zh_fraction <= 1.0:
        raise CommandError(f"--zh-fraction is {zh_fraction}: use a value from 0 to 1")
    try:
        manifest = simulate_cohort(
            out_dir,
            n_patients=patients,
            seed=seed,
            language_mix={"en": 1.0 - zh_fraction, "zh": zh_fraction},
        )
    except ValueError as error:
        # The simulator raises ValueError for a non-empty output folder and bad mixes.
        raise CommandError(str(error)) from error
    return Path(manifest)


def run_fit(args: argparse.Namespace) -> int:
    """Train a bundle on a manifest and print its metrics."""
    from hipfuse.training.cohort import load_cohort

    cohort = load_cohort(args.manifest)
    config = _fit_config(args)
    result = _fit(cohort, config, args, external_centres=args.external_centre)
    if result.bundle_dir is not None:
        _print_result(result)
    return 0


def _fit_config(args: argparse.Namespace):
    from hipfuse.inference.model.bundle import read_bundle_config
    from hipfuse.inference.model.config import IntendedUse, ModelPreset, make_bundle_config

    if args.init_from is not None:
        base = read_bundle_config(args.init_from)
        return base.model_copy(
            update={
                "name": args.name,
                "version": args.version,
                "intended_use": IntendedUse(args.intended_use),
                "training_data": {},
                "metrics": {},
                "weights_sha256": "",
                "created": None,
            }
        )
    return make_bundle_config(
        ModelPreset(args.preset),
        name=args.name,
        version=args.version,
        intended_use=IntendedUse(args.intended_use),
    )


def _fit(cohort, config, args: argparse.Namespace, *, external_centres: list[str]):
    from hipfuse.training.fit import fit

    augment = augment_settings(args)
    return fit(
        cohort,
        config,
        args.out,
        mode=args.mode,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        patience=args.patience,
        resume=args.resume,
        init_from=args.init_from,
        device=args.device,
        work_dir=args.work_dir,
        cache_dir=args.cache_dir,
        external_centres=external_centres,
        test_fraction=args.test_fraction,
        validation_fraction=args.validation_fraction,
        augment=augment,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        n_bootstrap=args.bootstrap,
    )


def augment_settings(args: argparse.Namespace):
    """Return the augmentation settings of ``--modality-dropout`` and ``--no-augment``."""
    from dataclasses import replace

    from hipfuse.training.augment import AugmentSettings

    augment = AugmentSettings(modality_dropout=args.modality_dropout)
    if args.no_augment:
        augment = replace(
            augment,
            log_scale=0.0,
            radiograph_log_gamma=0.0,
            radiograph_contrast=0.0,
            radiograph_brightness=0.0,
            ct_gain=0.0,
            ct_offset_hu=0.0,
        )
    return augment


def run_demo_bundle(args: argparse.Namespace) -> int:
    """Simulate a cohort, train the demo preset end to end and report time and test AUC."""
    from hipfuse.inference.model.config import IntendedUse, ModelPreset, make_bundle_config
    from hipfuse.training.cli import (
        DEFAULT_BOOTSTRAP,
        DEFAULT_LR,
        DEFAULT_MODALITY_DROPOUT,
        DEFAULT_TEST_FRACTION,
        DEFAULT_VALIDATION_FRACTION,
        DEFAULT_WEIGHT_DECAY,
        DEMO_BATCH_SIZE,
        DEMO_NAME,
        DEMO_PATIENCE,
        DEMO_VERSION,
        DEMO_ZH_FRACTION,
    )
    from hipfuse.training.cohort import load_cohort

    if args.out.exists() and not args.overwrite:
        raise CommandError(
            f"bundle folder {args.out} already exists: choose another or pass --overwrite"
        )
    started = time.perf_counter()
    temporary = None
    work_dir = args.work_dir
    if work_dir is None:
        temporary = Path(tempfile.mkdtemp(prefix="hipfuse-demo-"))
        work_dir = temporary
    try:
        cohort_dir = work_dir / "cohort"
        manifest = cohort_dir / "manifest.csv"
        if not manifest.is_file():
            manifest = _simulate(cohort_dir, args.patients, args.seed, DEMO_ZH_FRACTION)
        simulated_s = time.perf_counter() - started
        cohort = load_cohort(manifest)
        config = make_bundle_config(
            ModelPreset.DEMO, name=DEMO_NAME, version=DEMO_VERSION, intended_use=IntendedUse.DEMO
        )
        fit_args = argparse.Namespace(
            out=args.out,
            mode="end_to_end",
            epochs=args.epochs,
            batch_size=DEMO_BATCH_SIZE,
            lr=DEFAULT_LR,
            weight_decay=DEFAULT_WEIGHT_DECAY,
            seed=args.seed,
            patience=DEMO_PATIENCE,
            resume=False,
            init_from=None,
            device=args.device,
            work_dir=work_dir / "training",
            cache_dir=None,
            test_fraction=DEFAULT_TEST_FRACTION,
            validation_fraction=DEFAULT_VALIDATION_FRACTION,
            modality_dropout=DEFAULT_MODALITY_DROPOUT,
            no_augment=False,
            # Cropping is per image and independent, so it uses every usable core.
            workers=len(os.sched_getaffinity(0)),
            overwrite=args.overwrite,
            no_progress=args.no_progress,
            bootstrap=DEFAULT_BOOTSTRAP,
        )
        result = _fit(cohort, config, fit_args, external_centres=[])
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    total_s = time.perf_counter() - started
    _print_result(result)
    print(f"simulation: {simulated_s:.0f} s, total: {total_s:.0f} s")
    log.info(
        "demo_bundle_built",
        bundle=str(args.out),
        simulate_s=round(simulated_s, 1),
        total_s=round(total_s, 1),
        test_macro_auc=result.metrics.get("test", {}).get("macro_auc"),
    )
    return 0


def _print_result(result: Any) -> None:
    print(f"bundle: {result.bundle_dir}")
    print(
        f"epochs: {result.epochs_run} (best {result.best_epoch}"
        f"{', stopped early' if result.stopped_early else ''}), "
        f"temperature: {result.temperature:.3f}"
    )
    for split in ("validation", "test", "external"):
        figures = result.metrics.get(split)
        if not figures:
            continue
        auc = figures.get("macro_auc")
        interval = figures.get("macro_auc_ci") or [None, None]
        auc_text = "undefined" if auc is None else f"{auc:.3f}"
        if auc is not None and None not in interval:
            auc_text += f" (95% CI {interval[0]:.3f} to {interval[1]:.3f})"
        print(f"{split}: {figures['n_cases']} hips, macro AUC {auc_text}")


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a bundle on a manifest, or the models of a predictions CSV."""
    from hipfuse.training.evaluate import evaluate_predictions
    from hipfuse.training.evaluation_files import write_evaluation
    from hipfuse.training.model_comparison import compare_models
    from hipfuse.training.predictions_io import read_predictions_csv

    out = Path(args.out)
    if args.predictions is not None:
        by_model = read_predictions_csv(args.predictions)
    else:
        if args.pointing_tolerance_mm < 0:
            raise CommandError(
                f"--pointing-tolerance-mm is {args.pointing_tolerance_mm}: use 0 or a positive "
                "distance"
            )
        if args.gallery_per_class < 0:
            raise CommandError(
                f"--gallery-per-class is {args.gallery_per_class}: use 0 (no gallery) or more"
            )
        by_model = {"bundle": _bundle_predictions(args)}
    for name, predictions in by_model.items():
        result = evaluate_predictions(predictions, seed=args.seed, n_bootstrap=args.bootstrap)
        target = out if len(by_model) == 1 else out / _safe_folder_name(name)
        write_evaluation(result, target)
        macro = result["macro_auc"]
        print(
            f"{name}: {result['n_cases']} hips, macro AUC "
            f"{'undefined' if macro is None else f'{macro:.3f}'} -> {target}"
        )
    if len(by_model) > 1:
        comparison = compare_models(by_model, seed=args.seed, n_bootstrap=args.bootstrap)
        path = out / "comparison.json"
        path.write_text(json.dumps(comparison, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        print(f"comparison: {path}")
    if args.predictions is None:
        _explain_bundle(args, out)
    return 0


def _explain_bundle(args: argparse.Namespace, out: Path) -> None:
    """Score Grad-CAM localisation (when the manifest has masks) and render the gallery."""
    from hipfuse.inference.model.bundle import load_bundle
    from hipfuse.training.cohort import Split, load_cohort
    from hipfuse.training.localisation import (
        format_localisation,
        has_mask_columns,
        localise_cohort,
        summarise_localisation,
        write_localisation,
    )
    from hipfuse.training.report_gallery import write_gallery

    cohort = load_cohort(args.manifest)
    hips = [hip for hip in cohort.hips if args.split is None or hip.split is Split(args.split)]
    if args.no_localisation and args.gallery_per_class == 0:
        return
    bundle = load_bundle(args.bundle, device=args.device)
    if has_mask_columns(cohort) and not args.no_localisation:
        rows = localise_cohort(bundle, cohort, hips, tolerance_mm=args.pointing_tolerance_mm)
        summary = summarise_localisation(rows, args.pointing_tolerance_mm)
        write_localisation(rows, summary, out)
        print("\n".join(format_localisation(summary)))
    if args.gallery_per_class > 0:
        index = write_gallery(bundle, hips, out, per_class=args.gallery_per_class)
        print(f"gallery: {len(index['entries'])} hips -> {out / 'gallery'}")


def _bundle_predictions(args: argparse.Namespace):
    import numpy as np
    import torch

    from hipfuse.inference.model.bundle import load_bundle
    from hipfuse.training.attention_weights import (
        ATTENTION_FILE_NAME,
        collect_attention,
        write_attention,
    )
    from hipfuse.training.batches import CropSource
    from hipfuse.training.cohort import Split, load_cohort
    from hipfuse.training.crops import prepare_crops
    from hipfuse.training.fit_report import write_predictions
    from hipfuse.training.loop import class_weights, evaluate
    from hipfuse.training.predictions_io import Predictions

    bundle = load_bundle(args.bundle, device=args.device)
    cohort = load_cohort(args.manifest)
    hips = list(cohort.hips)
    if args.split is not None:
        hips = [hip for hip in hips if hip.split is Split(args.split)]
        if not hips:
            raise CommandError(f"the manifest has no hip in split {args.split!r}")
    crops = prepare_crops(
        cohort,
        bundle.config.preprocessing,
        args.cache_dir or Path(args.out) / "cache",
        bundle.text_encoder,
    )
    hips = [hip for hip in hips if hip.hip_id in crops.hips]
    source = CropSource(hips, crops, bundle.config.preprocessing)
    evaluation = evaluate(bundle.model, source, class_weights(source.labels), bundle.device)
    write_attention(
        Path(args.out) / ATTENTION_FILE_NAME,
        source.hip_ids,
        source.labels,
        collect_attention(bundle.model, source, bundle.device),
    )
    logits = torch.from_numpy(evaluation.logits)
    probabilities = torch.softmax(logits / bundle.model.temperature.cpu(), dim=1).double().numpy()
    write_predictions(
        Path(args.out) / "predictions.csv",
        source.hip_ids,
        source.patient_ids,
        source.labels,
        probabilities,
        [hip.split.value if hip.split else "" for hip in hips],
    )
    return Predictions.from_arrays(
        source.labels,
        np.asarray(source.patient_ids),
        probabilities,
        case_ids=source.hip_ids,
        model_name=bundle.config.name,
    )


def _safe_folder_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return cleaned or "model"
