"""``hipfuse-analyze``: analyse one study from files and write JSON and overlays.

Heavy imports (torch, transformers) happen only after the arguments are
parsed, so ``--help`` and argument errors are instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_INPUT_ERROR = 2
EXIT_BUNDLE_ERROR = 3


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser."""
    parser = argparse.ArgumentParser(
        prog="hipfuse-analyze",
        description=(
            "Classify each hip as normal, osteoarthritis, osteonecrosis of the femoral "
            "head or femoroacetabular impingement from an AP pelvis radiograph, a "
            "pelvic CT and clinical text; write result.json and Grad-CAM overlays."
        ),
    )
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle folder")
    parser.add_argument("--radiograph", type=Path, help="AP pelvis radiograph (DICOM, PNG, JPEG)")
    parser.add_argument(
        "--ct", type=Path, help="CT series folder, DICOM files' folder, or NIfTI file (.nii.gz)"
    )
    parser.add_argument(
        "--text", type=Path, help="clinical note (UTF-8, UTF-16 with BOM or GB18030)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--no-gradcam", action="store_true", help="skip Grad-CAM maps (faster, no overlays)"
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; return the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.radiograph or args.ct or args.text):
        parser.error("give at least one input: --radiograph, --ct or --text")
    for option in ("bundle", "radiograph", "ct", "text"):
        path = getattr(args, option)
        if path is not None and not path.exists():
            parser.error(f"--{option} {path}: no such file or folder")

    from hipfuse.config.logging import configure_logging

    configure_logging(args.log_level)

    from hipfuse.inference.model.bundle import BundleError, load_bundle
    from hipfuse.inference.outputs import write_result
    from hipfuse.inference.pipeline import analyze_study, read_inputs
    from hipfuse.inference.types import InputError

    try:
        bundle = load_bundle(args.bundle)
    except BundleError as error:
        print(f"hipfuse-analyze: model bundle {args.bundle} rejected: {error}", file=sys.stderr)
        return EXIT_BUNDLE_ERROR
    try:
        inputs = read_inputs(args.radiograph, args.ct, args.text)
        result = analyze_study(bundle, inputs, gradcam=not args.no_gradcam)
    except InputError as error:
        print(f"hipfuse-analyze: {error} [{error.code}]", file=sys.stderr)
        return EXIT_INPUT_ERROR
    document = write_result(result, bundle, args.out)
    print_summary(document, args.out)
    return 0


def print_summary(document: dict, out_dir: Path) -> None:
    """Print the per-hip findings and the written files for a human reader."""
    from hipfuse.inference.types import HipClass

    model = document["model"]
    print(f"model {model['name']} {model['version']} ({model['intended_use']})")
    if document["not_for_clinical_use"]:
        print("NOT FOR CLINICAL USE")
    for hip in document["hips"]:
        side = "right" if hip["laterality"] == "R" else "left"
        probability = hip["probabilities"][hip["predicted_class"]]
        attention = ", ".join(f"{k} {v:.2f}" for k, v in hip["attention"].items())
        name = HipClass(hip["predicted_class"]).display_name
        print(f"{side} hip: {name} (p={probability:.2f}; attention {attention})")
    for warning in document["warnings"]:
        print(f"warning [{warning['code']}]: {warning['message']}")
    print(f"result: {out_dir / 'result.json'}")
    for name in document["overlays"]:
        print(f"overlay: {out_dir / name}")


if __name__ == "__main__":
    sys.exit(main())
