"""The README contract: two commands first, and .ci/run runs the second one verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
    quickstart, test_command = blocks[0].strip(), blocks[1].strip()
    assert "training/run_pretraining.py training/configs/quickstart.yaml" in quickstart
    assert (ROOT / "training/configs/quickstart.yaml").exists()
    assert test_command in (ROOT / ".ci" / "run").read_text()
