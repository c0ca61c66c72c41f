"""Fusion against single modalities on a simulated cohort of 60 patients (minutes on 2 cores)."""

import pytest

from hipfuse.inference.model.config import IntendedUse, ModelPreset, make_bundle_config
from hipfuse.training.ablation import run_ablation
from hipfuse.training.ablation_table import ablation_table, format_table
from hipfuse.training.cohort import load_cohort
from hipfuse.training.simulate import simulate_cohort

# Test macro AUCs from about 25 test hips move by a few hundredths between seeds.
MARGIN = 0.05


@pytest.mark.slow
def test_fusion_not_worse_than_best_single_modality(tmp_path):
    cohort = load_cohort(simulate_cohort(tmp_path / "cohort", 60, seed=2, workers=2))
    config = make_bundle_config(
        ModelPreset.DEMO, name="ablation-slow", version="0", intended_use=IntendedUse.RESEARCH
    )

    runs = run_ablation(
        cohort,
        config,
        tmp_path / "work",
        mode="two_stage",
        epochs=40,
        batch_size=16,
        patience=10,
        seed=0,
        workers=2,
        progress=False,
    )
    table = ablation_table(runs, n_bootstrap=200, seed=0)
    print(format_table(table))

    by_subset = {row["subset"]: row["macro_auc"] for row in table["rows"]}
    singles = [by_subset[name] for name in ("radiograph", "ct", "text")]
    assert None not in singles
    assert by_subset["radiograph+ct+text"] is not None
    assert by_subset["radiograph+ct+text"] >= max(singles) - MARGIN
