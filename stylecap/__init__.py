"""StyleCap library code shared by the top-level scripts (features, data, metrics, reports).

The model itself lives in the top-level ``models/`` package.
"""
__version__ = "0.1.0"
