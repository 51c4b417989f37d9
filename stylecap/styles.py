"""The 215 PersonalityCaptions traits (published order) and their positive/neutral/negative groups.

Trait strings are matched exactly: glosses such as "Appreciative (Grateful)" are part of the name.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

TRAITS_FILE = Path(__file__).resolve().parent / "data" / "personality_traits.json"


@lru_cache(maxsize=None)
def _load() -> dict:
    with open(TRAITS_FILE, encoding="utf-8") as f:
        return json.load(f)


def all_traits() -> list[str]:
    return list(_load()["traits"])


def trait_group(trait: str) -> str | None:
    """'positive' | 'neutral' | 'negative' for a known trait, else None."""
    for group, names in _load()["groups"].items():
        if trait in names:
            return group
    return None

