"""docs/reliability.md names, for each promise, the test that proves it: every name given there
must be a test that exists, or the promise has lost its proof without anyone noticing."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = re.compile(r"`(?:tests/)?(test_[a-z0-9_]+\.py)::([A-Za-z0-9_]+)(?:\[[^\]]*\])?`")


def test_every_test_named_as_proof_exists():
    text = (ROOT / "docs" / "reliability.md").read_text()
    references = set(REFERENCE.findall(text))
    assert len(references) > 100  # the pattern still matches how the page names tests
    missing = [
        f"{module}::{name}"
        for module, name in sorted(references)
        if not (path := ROOT / "tests" / module).exists()
        or not re.search(rf"^(async )?def {name}\(", path.read_text(), re.MULTILINE)
    ]
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"
