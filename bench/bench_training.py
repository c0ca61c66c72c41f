"""Benchmark training on the CPU: embedding extraction, two-stage head training, demo bundle.

Prints one JSON document and writes the figures under the "Training" heading
of docs/benchmarks.md (other headings are kept):

- ``extraction``: image embedding extraction per preset, as two-stage
  training runs it (both encoders in eval mode under ``torch.inference_mode``,
  batches of ``EXTRACTION_BATCH`` synthetic crops of the preset's shape, no
  disk reads). Hips per second and achieved GFLOP/s (FLOPs counted by
  ``torch.utils.flop_counter``) against the fp32 matmul peak measured in the
  same process.
- ``head_training``: two-stage training of the default preset's fusion head
  on synthetic cached embeddings of the right shapes (radiograph and CT
  encoder features, 384-d text). There are 600 training and 150 validation
  hips, whose class shifts the embedding means, and a fixed number of epochs
  without early stopping.
- ``demo_bundle`` (with ``--demo-bundle``): wall time of
  ``hipfuse-train demo-bundle`` with its defaults (minutes).

Usage::

    .venv/bin/python bench/bench_training.py [--threads 2] [--demo-bundle] [--no-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"
HEAD_TRAIN_HIPS = 600
HEAD_VALIDATION_HIPS = 150
HEAD_EPOCHS = 20
HEAD_BATCH = 16


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    """Return the best fp32 matmul rate in GFLOP/s over ``repeats`` runs."""
    import torch

    a = torch.randn(size, size)
    b = torch.randn(size, size)
    for _ in range(2):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def bench_extraction(preset_name: str, n_hips: int, peak: float) -> dict:
    """Time the frozen encoders over ``n_hips`` synthetic crops and count their FLOPs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from hipfuse.inference.model.bundle import build_model
    from hipfuse.inference.model.config import (
        ARCHITECTURE_PRESETS,
        PREPROCESSING_PRESETS,
        ModelPreset,
    )
    from hipfuse.training.two_stage import EXTRACTION_BATCH

    preset = ModelPreset(preset_name)
    model = build_model(ARCHITECTURE_PRESETS[preset], seed=0).eval()
    preprocessing = PREPROCESSING_PRESETS[preset]
    batch = min(EXTRACTION_BATCH, n_hips)
    radiograph = torch.randn(batch, 1, *preprocessing.radiograph.crop_shape)
    ct = torch.randn(batch, 1, *preprocessing.ct.crop_shape)

    def run_batch() -> None:
        model.radiograph_encoder(radiograph)
        model.ct_encoder(ct)

    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            run_batch()
        flops_per_hip = counter.get_total_flops() / batch
        run_batch()  # warm-up of the allocator and oneDNN kernels
        batches = max(1, n_hips // batch)
        started = time.perf_counter()
        for _ in range(batches):
            run_batch()
        seconds = time.perf_counter() - started
    hips = batches * batch
    achieved = flops_per_hip * hips / seconds / 1e9
    return {
        "preset": preset.value,
        "hips": hips,
        "batch": batch,
        "radiograph_crop": list(preprocessing.radiograph.crop_shape),
        "ct_crop": list(preprocessing.ct.crop_shape),
        "gflop_per_hip": round(flops_per_hip / 1e9, 2),
        "seconds": round(seconds, 2),
        "hips_per_s": round(hips / seconds, 2),
        "achieved_gflops": round(achieved, 1),
        "peak_fraction": round(achieved / peak, 3),
    }


def _feature_source(n: int, dims: tuple[int, int, int], seed: int):
    import numpy as np

    from hipfuse.training.batches import FeatureSource, HipSource

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    # Each class shifts a different block of every embedding, so the head has something to learn.
    arrays = []
    for dim in dims:
        values = rng.standard_normal((n, dim)).astype(np.float32)
        block = dim // 4
        for k in range(4):
            values[labels == k, k * block : (k + 1) * block] += 0.2
        arrays.append(values)
    ids = [f"h{i}" for i in range(n)]
    base = HipSource(ids, [f"p{i // 2}" for i in range(n)], labels, np.ones((n, 3), bool))
    return FeatureSource(base, *arrays)


def bench_head_training(threads: int) -> dict:
    """Train the default preset's head two-stage on synthetic embeddings; return seconds."""
    import torch

    from hipfuse.inference.model.bundle import build_model
    from hipfuse.inference.model.config import ARCHITECTURE_PRESETS, ModelPreset
    from hipfuse.training.augment import AugmentSettings
    from hipfuse.training.checkpoint import TrainingState
    from hipfuse.training.cohort import Split
    from hipfuse.training.distributed import DistributedContext, GlobalBatchSampler
    from hipfuse.training.loop import class_weights, evaluate, run_epochs
    from hipfuse.training.two_stage import detach_encoders

    architecture = ARCHITECTURE_PRESETS[ModelPreset.DEFAULT]
    model = build_model(architecture, seed=0)
    dims = (
        model.radiograph_encoder.out_features,
        model.ct_encoder.out_features,
        architecture.text_dim,
    )
    detach_encoders(model)
    sources = {
        Split.TRAIN: _feature_source(HEAD_TRAIN_HIPS, dims, 0),
        Split.VALIDATION: _feature_source(HEAD_VALIDATION_HIPS, dims, 1),
    }
    weights = class_weights(sources[Split.TRAIN].labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    context = DistributedContext()
    state = TrainingState()
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        run_epochs(
            model,
            model,
            sources,
            GlobalBatchSampler(HEAD_TRAIN_HIPS, HEAD_BATCH, 0, context),
            optimizer,
            weights,
            state,
            epochs=HEAD_EPOCHS,
            patience=HEAD_EPOCHS,
            seed=0,
            draw_settings=AugmentSettings(),
            device=torch.device("cpu"),
            context=context,
            checkpoint_dir=Path(work),
            fingerprint={"bench": True},
            progress=False,
        )
        seconds = time.perf_counter() - started
    validation = evaluate(model, sources[Split.VALIDATION], weights, torch.device("cpu"))
    return {
        "embeddings": "synthetic cached embeddings of the default preset's sizes "
        f"(radiograph {dims[0]}, CT {dims[1]}, text {dims[2]})",
        "train_hips": HEAD_TRAIN_HIPS,
        "validation_hips": HEAD_VALIDATION_HIPS,
        "epochs": HEAD_EPOCHS,
        "batch": HEAD_BATCH,
        "seconds": round(seconds, 2),
        "seconds_per_epoch": round(seconds / HEAD_EPOCHS, 3),
        "validation_macro_auc": round(float(validation.macro_auc), 3),
        "threads": threads,
    }


def bench_demo_bundle() -> dict:
    """Build the demo bundle with ``hipfuse-train demo-bundle`` defaults; return its wall time."""
    with tempfile.TemporaryDirectory() as work:
        command = [
            sys.executable,
            "-m",
            "hipfuse.training.cli",
            "--log-level",
            "WARNING",
            "demo-bundle",
            "--out",
            str(Path(work) / "demo"),
            "--no-progress",
        ]
        started = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(
            f"demo-bundle failed with exit status {completed.returncode}: "
            f"{completed.stderr[-2000:]}"
        )
    auc = re.search(r"test: .*macro AUC (\S+)", completed.stdout)
    return {"seconds": round(seconds, 1), "test_macro_auc": auc.group(1) if auc else None}


def machine() -> dict:
    """Return the CPU model name and the usable cores (lscpu)."""
    output = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    name = re.search(r"Model name:\s*(.+)", output)
    return {
        "cpu": name.group(1).strip() if name else "unknown",
        "cores": len(os.sched_getaffinity(0)),
    }


def training_section(report: dict, command: str) -> str:
    """Return the Markdown of the "Training" section."""
    lines = [
        "## Training",
        "",
        f"Measured with `{command}` on {report['machine']['cpu']}, "
        f"{report['machine']['cores']} cores, torch {report['torch']}, "
        f"{report['threads']} threads. fp32 matmul peak in the same process: "
        f"{report['matmul_peak_gflops']} GFLOP/s. Times are noisy on a shared machine: "
        "compare ratios within one run.",
        "",
        "Embedding extraction (both frozen image encoders, eval mode, synthetic crops):",
        "",
        "| preset | crops (radiograph, CT) | GFLOP/hip | hips/s | GFLOP/s | of peak |",
        "|---|---|---|---|---|---|",
    ]
    for entry in report["extraction"]:
        lines.append(
            f"| {entry['preset']} | {entry['radiograph_crop']}, {entry['ct_crop']} | "
            f"{entry['gflop_per_hip']} | {entry['hips_per_s']} | {entry['achieved_gflops']} | "
            f"{entry['peak_fraction']} |"
        )
    head = report["head_training"]
    lines += [
        "",
        f"Two-stage head training of the default preset's head on {head['embeddings']}: "
        f"{head['train_hips']} training and {head['validation_hips']} validation hips, "
        f"{head['epochs']} epochs of batch {head['batch']}: {head['seconds']} s "
        f"({head['seconds_per_epoch']} s per epoch, validation included).",
    ]
    demo = report.get("demo_bundle")
    if demo is not None:
        lines += [
            "",
            f"Demo bundle (`hipfuse-train demo-bundle` defaults: simulate, crop, train end to "
            f"end, evaluate): {demo['seconds']} s, test macro AUC {demo['test_macro_auc']}.",
        ]
    else:
        lines += ["", "Demo bundle build time: not measured in this run (pass `--demo-bundle`)."]
    return "\n".join(lines) + "\n"


def write_docs(section: str, path: Path = DOCS) -> None:
    """Replace or add the "## Training" section of ``path``, keeping every other section."""
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    pattern = re.compile(r"^## Training\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def main() -> int:
    """Run the benchmark, print one JSON document and update docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--hips",
        type=int,
        default=32,
        help="hips per extraction measurement of the default preset, 8 times as many for the "
        "demo preset (default 32)",
    )
    parser.add_argument(
        "--demo-bundle", action="store_true", help="also time the demo bundle build (minutes)"
    )
    parser.add_argument(
        "--no-docs", action="store_true", help="print only; leave docs/benchmarks.md unchanged"
    )
    args = parser.parse_args()

    import structlog
    import torch

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    torch.set_num_threads(args.threads)

    peak = matmul_peak_gflops()
    report = {
        "machine": machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "matmul_peak_gflops": round(peak, 1),
        "extraction": [
            # The demo encoders are about 150 times cheaper: time more hips for a stable figure.
            bench_extraction("demo", args.hips * 8, peak),
            bench_extraction("default", args.hips, peak),
        ],
        "head_training": bench_head_training(args.threads),
    }
    if args.demo_bundle:
        report["demo_bundle"] = bench_demo_bundle()
    json.dump(report, sys.stdout, indent=2)
    print()
    if not args.no_docs:
        command = "python bench/bench_training.py " + shlex.join(sys.argv[1:])
        write_docs(training_section(report, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
