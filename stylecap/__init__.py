"""StyleCap library code shared by the top-level scripts (features, data, metrics, reports).

The model itself lives in the top-level ``models/`` package.
"""
__version__ = "0.1.0"

# The CLIP used when none is named: by a flag, or by a checkpoint's record (process_*.py, predict.py, app.py,
# scripts/check_inputs.py). Here, in the package's dependency-free root, so that a stdlib-only check can read it.
DEFAULT_CLIP = "pre_model/ViT-B-32.pt"
