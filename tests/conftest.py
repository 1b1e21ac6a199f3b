"""Fixtures shared by several test files."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

pytest_plugins = ["browserfixtures"]  # the browser and page fixtures

STANDIN = Path(__file__).resolve().parent / "picamera2_standin"


@pytest.fixture
def picamera2(monkeypatch: pytest.MonkeyPatch):
    """The picamera2 stand-in (picamera2's API, no camera) importable as `picamera2`, fresh state."""
    monkeypatch.syspath_prepend(str(STANDIN))
    sys.modules.pop("picamera2", None)
    mod = importlib.import_module("picamera2")
    mod.reset()
    yield mod
    sys.modules.pop("picamera2", None)
