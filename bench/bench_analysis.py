"""Benchmark one study's analysis on the CPU at the default model sizes.

Prints the time per stage (decode, hip regions, each encoder, fusion,
Grad-CAM), the model's FLOPs, the fp32 matmul peak measured in the same
process, and two comparable figures:

- ``model_peak_fraction``: model FLOPs / model compute time / matmul peak
  (target 0.6 or better);
- ``non_model_share``: share of the study's time spent outside model compute
  (target under 0.30).

Usage::

    .venv/bin/python bench/bench_analysis.py [--threads 2] [--repeats 3] [--device cpu]

The real sample study is used: an AP pelvis radiograph, the real pelvis CT
written as a DICOM series (so the DICOM decode path is measured) and a real
note. The weights are untrained; compute does not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"


def matmul_peak_gflops(device, size: int = 2048, repeats: int = 10) -> float:
    """Return the best fp32 matmul rate in GFLOP/s over ``repeats`` runs."""
    import torch

    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    for _ in range(2):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def count_model_flops(bundle, hips) -> tuple[float, float]:
    """Return (forward FLOPs, Grad-CAM FLOPs) of one predict call, text encoder included."""
    from torch.utils.flop_counter import FlopCounterMode

    from hipfuse.inference.model.predict import predict

    with FlopCounterMode(display=False) as forward_counter:
        predict(bundle, hips, gradcam=False)
    with FlopCounterMode(display=False) as gradcam_counter:
        predict(bundle, hips, gradcam=True)
    return float(forward_counter.get_total_flops()), float(gradcam_counter.get_total_flops())


def main() -> int:
    """Run the benchmark and print one JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    args = parser.parse_args()

    import structlog
    import torch

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from hipfuse.inference.model.bundle import build_untrained_bundle
    from hipfuse.inference.model.config import ModelPreset, make_bundle_config
    from hipfuse.inference.model.predict import HipInputs, model_compute_s
    from hipfuse.inference.pipeline import analyze_study, read_inputs
    from hipfuse.inference.readers.ct import reorient_to_canonical
    from hipfuse.inference.readers.dicom_series_writer import write_ct_series
    from hipfuse.inference.readers.nifti import read_nifti_ct
    from hipfuse.inference.readers.radiograph import read_radiograph

    config = make_bundle_config(
        ModelPreset.DEFAULT, name="bench", version="0", intended_use="research"
    )
    bundle = build_untrained_bundle(config, seed=0, device=device)

    paths_radiograph = SAMPLES / "xray" / "ap_pelvis_ddh_1.dcm"
    with tempfile.TemporaryDirectory() as work:
        ct_dir = Path(work) / "ct"
        write_ct_series(
            reorient_to_canonical(read_nifti_ct(SAMPLES / "ct" / "pelvis_ct_3mm.nii.gz")),
            ct_dir,
            # The sample CT and radiograph come from different people: give the CT
            # the radiograph's identity so the consistency check passes.
            read_radiograph(paths_radiograph).identity,
        )
        paths = {
            "radiograph_path": paths_radiograph,
            "ct_path": ct_dir,
            "text_path": SAMPLES / "text" / "hip_osteoarthritis_left_mtsamples_258.txt",
        }
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if args.bf16
            else torch.autocast(device.type, enabled=False)
        )
        runs = []
        with autocast:
            analyze_study(bundle, read_inputs(**paths))  # warm-up: allocator, oneDNN kernels
            for _ in range(args.repeats):
                started = time.perf_counter()
                result = analyze_study(bundle, read_inputs(**paths))
                result.timings_s["study_s"] = time.perf_counter() - started
                runs.append(result.timings_s)
        hips = [
            HipInputs(
                hip.laterality, hip.radiograph_region.crop, hip.ct_region.crop, result.text.text
            )
            for hip in result.hips
        ]
        forward_flops, gradcam_flops = count_model_flops(bundle, hips)
        probabilities = {
            hip.laterality.value: {k.value: v for k, v in hip.prediction.probabilities.items()}
            for hip in result.hips
        }

    peak = matmul_peak_gflops(device)
    median = {key: statistics.median([run[key] for run in runs]) for key in runs[0]}
    model_s = model_compute_s(median)
    study_s = median["study_s"]
    report = {
        "device": str(device),
        "threads": args.threads,
        "bf16": args.bf16,
        "matmul_peak_gflops": round(peak, 1),
        "model_gflop_forward": round(forward_flops / 1e9, 2),
        "model_gflop_with_gradcam": round(gradcam_flops / 1e9, 2),
        "model_compute_s": round(model_s, 4),
        "study_s": round(study_s, 4),
        "model_peak_fraction": round(gradcam_flops / 1e9 / model_s / peak, 3),
        "non_model_share": round((study_s - model_s) / study_s, 3),
        "stages_s": {key: round(value, 4) for key, value in median.items()},
        "probabilities": probabilities,
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
