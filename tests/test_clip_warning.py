"""Issue 17 section 7: openai-clip's import-time "pkg_resources is deprecated" UserWarning is silenced at our
entry points (pytest.ini filters it for the tests themselves, so each check runs in a fresh interpreter
with -W default). Before the fix, both cases below printed it (a bare `import clip` always does)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# after the imports: the same message from another module still shows (the filter is that narrow)
NARROW = ("; import warnings; warnings.warn_explicit('pkg_resources is deprecated as an API', UserWarning, "
          "'other.py', 1, module='other')")


@pytest.mark.parametrize("code", [
    # predict.py, app.py, evaluate.py / train.py --mode eval and process_*.py load CLIP through clip_utils
    "import stylecap.clip_utils; import clip",
    # make demo (scripts/make_small_models.py) and bench build the small random CLIP with this
    "from stylecap.demo.small_models import make_clip; import clip",
])
def test_clip_pkg_resources_warning_is_silenced_at_the_entry_points(code):
    proc = subprocess.run([sys.executable, "-W", "default", "-c", code + NARROW], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "clip.py" not in proc.stderr and proc.stderr.count("pkg_resources is deprecated") == 1, proc.stderr
    assert "other.py:1" in proc.stderr
