"""Issue 17 section 7: openai-clip's import-time "pkg_resources is deprecated" UserWarning is silenced at our
entry points (pytest.ini filters it for the tests themselves, so each check runs in a fresh interpreter
with -W default). Before the fix, both cases below printed it (a bare `import clip` always does)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# after the imports: the same message from another module still shows (the filter is that narrow)
NARROW = ("; import warnings; warnings.warn_explicit('pkg_resources is deprecated as an API', UserWarning, "
          "'other.py', 1, module='other')")


ENTRY_POINTS = [
    # predict.py, app.py, evaluate.py / train.py --mode eval and process_*.py load CLIP through clip_utils
    "import stylecap.clip_utils; import clip",
    # make demo (scripts/make_small_models.py) and bench build the small random CLIP with this
    "from stylecap.demo.small_models import make_clip; import clip",
]


def test_clip_pkg_resources_warning_is_silenced_at_the_entry_points():
    # one fresh interpreter per entry point, started together (each spends seconds importing torch)
    procs = {code: subprocess.Popen([sys.executable, "-W", "default", "-c", code + NARROW], cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for code in ENTRY_POINTS}
    for code, proc in procs.items():
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, (code, stderr)
        assert "clip.py" not in stderr and stderr.count("pkg_resources is deprecated") == 1, (code, stderr)
        assert "other.py:1" in stderr, (code, stderr)
