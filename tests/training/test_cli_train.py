import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import structlog
from synthetic_cohort import use_fake_cropper, write_synthetic_cohort

from hipfuse.inference.types import HIP_CLASSES
from hipfuse.training.cli import EXIT_INPUT_ERROR, build_parser, main

SUBCOMMANDS = ["simulate", "fit", "demo-bundle", "evaluate"]


@pytest.fixture(autouse=True)
def reset_logging():
    # main() points structlog at the current sys.stderr, which is pytest's capture
    # file. Later tests must not log into that file after pytest closes it.
    yield
    structlog.reset_defaults()


def subparser(name):
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    return commands.choices[name]


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_help_exits_zero(name, capsys):
    with pytest.raises(SystemExit) as caught:
        main([name, "--help"])

    assert caught.value.code == 0
    assert "usage: hipfuse-train" in capsys.readouterr().out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_option_states_default(name):
    options = [
        action
        for action in subparser(name)._actions
        if action.option_strings and action.dest != "help" and not action.required
    ]

    undocumented = [action.option_strings[0] for action in options if "default" not in action.help]
    assert options
    assert undocumented == []


def test_help_imports_no_torch():
    code = (
        "import sys\n"
        "from hipfuse.training.cli import main\n"
        "try:\n"
        "    main(['fit', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'pandas' not in sys.modules, 'pandas imported'\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )

    assert completed.returncode == 0, completed.stderr


def test_bad_manifest_exits_with_message(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "hip_id,patient_id,laterality,label,radiograph_path,ct_path,text_path,centre\n"
        "h1,p1,R,sprain,,,missing.txt,A\n"
        "h1,p1,X,normal,,,,A\n",
        encoding="utf-8",
    )
    script = Path(sys.executable).with_name("hipfuse-train")

    completed = subprocess.run(
        [script, "fit", "--manifest", str(manifest), "--out", str(tmp_path / "bundle")],
        capture_output=True,
        text=True,
        check=False,
    )

    assert completed.returncode == EXIT_INPUT_ERROR
    assert "has 5 problem(s)" in completed.stderr
    assert "row 1, column label: unknown label 'sprain'" in completed.stderr
    assert "row 2, column hip_id: duplicate hip id 'h1'" in completed.stderr
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit", "--manifest", "absent.csv", "--out", "b"], "--manifest absent.csv: no such"),
        (["evaluate", "--out", "e"], "needs --bundle and --manifest, or --predictions"),
        (["fit", "--manifest", "m.csv", "--out", "b", "--mode", "fast"], "invalid choice"),
    ],
    ids=["missing manifest", "evaluate without input", "unknown mode"],
)
def test_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as caught:
        main(argv)

    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_simulate_rejects_bad_fraction(tmp_path, capsys):
    status = main(["simulate", "--out", str(tmp_path / "c"), "--zh-fraction", "1.5"])

    assert status == EXIT_INPUT_ERROR
    assert "--zh-fraction is 1.5: use a value from 0 to 1" in capsys.readouterr().err


def write_predictions(path, models):
    rng = np.random.default_rng(0)
    names = [c.value for c in HIP_CLASSES]
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["model", "case_id", "patient_id", "label", *[f"prob_{n}" for n in names]])
        for model in models:
            for case in range(40):
                label = case % 4
                scores = rng.random(4) + np.eye(4)[label] * 1.5
                probabilities = scores / scores.sum()
                writer.writerow(
                    [model, f"h{case}", f"p{case // 2}", names[label], *probabilities.round(6)]
                )
                # Rounding may leave the sum a little off 1; the reader tolerates 1e-3.


def test_evaluate_predictions_compares_models(tmp_path, capsys):
    predictions = tmp_path / "predictions.csv"
    write_predictions(predictions, ["fusion", "radiograph_only"])

    status = main(
        [
            "evaluate",
            "--predictions",
            str(predictions),
            "--out",
            str(tmp_path / "out"),
            "--bootstrap",
            "50",
        ]
    )

    assert status == 0
    for model in ("fusion", "radiograph_only"):
        metrics = json.loads((tmp_path / "out" / model / "metrics.json").read_text())
        assert metrics["n_cases"] == 40
        assert metrics["macro_auc"] > 0.8
    assert (tmp_path / "out" / "comparison.json").is_file()
    assert "fusion: 40 hips, macro AUC" in capsys.readouterr().out


def test_fit_then_evaluate_bundle(tmp_path, monkeypatch, capsys):
    use_fake_cropper(monkeypatch)
    manifest = write_synthetic_cohort(tmp_path / "cohort", 10, split_column=True)
    bundle = tmp_path / "bundle"
    cache = tmp_path / "cache"

    fit_status = main(
        [
            "fit",
            "--manifest",
            str(manifest),
            "--out",
            str(bundle),
            "--preset",
            "demo",
            "--mode",
            "two_stage",
            "--epochs",
            "2",
            "--bootstrap",
            "10",
            "--no-progress",
            "--cache-dir",
            str(cache),
            "--intended-use",
            "demo",
        ]
    )
    evaluate_status = main(
        [
            "evaluate",
            "--bundle",
            str(bundle),
            "--manifest",
            str(manifest),
            "--split",
            "test",
            "--out",
            str(tmp_path / "evaluation"),
            "--cache-dir",
            str(cache),
            "--bootstrap",
            "10",
        ]
    )

    assert fit_status == 0
    assert evaluate_status == 0
    output = capsys.readouterr().out
    assert f"bundle: {bundle}" in output
    assert "test: 4 hips, macro AUC" in output
    config = json.loads((bundle / "bundle.json").read_text())
    assert config["intended_use"] == "demo"
    assert config["training_data"]["splits"]["train"]["n_hips"] == 12
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert metrics["n_cases"] == 4
    with (tmp_path / "evaluation" / "predictions.csv").open(encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert {row["split"] for row in rows} == {"test"}
