"""Spawned worker processes log as their parent does: JSON on stderr, nothing on stdout."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from hipfuse.config.logging import configure_logging
    from hipfuse.inference.model.config import IntendedUse, ModelPreset, make_bundle_config
    from hipfuse.training.cohort import load_cohort
    from hipfuse.training.crops import prepare_crops
    from hipfuse.training.simulate.cohort import simulate_cohort

    if __name__ == "__main__":
        configure_logging("INFO", json=True)
        root = Path(sys.argv[1])
        cohort = load_cohort(simulate_cohort(root / "cohort", 2, seed=1, workers=2))
        config = make_bundle_config(
            ModelPreset.DEMO, intended_use=IntendedUse.DEMO, name="logging", version="1"
        )
        prepare_crops(cohort, config.preprocessing, root / "cache", None, workers=2, progress=False)
    """
)


def test_spawned_workers_log_json_to_stderr(tmp_path: Path) -> None:
    script = tmp_path / "crop_with_workers.py"
    script.write_text(SCRIPT)

    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    events = [json.loads(line)["event"] for line in result.stderr.splitlines()]
    # radiograph_read is logged by the workers that read the images.
    assert events.count("radiograph_read") == 2
