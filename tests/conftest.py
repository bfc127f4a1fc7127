"""Shared test fixtures: optional-oracle imports and the path to ../shared."""
import importlib
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # flat modules live at the repository root

SHARED = ROOT.parent / "shared"


def require_oracle(module_name):
    """Import an oracle library (torch, tiktoken, ...) or skip the test.

    Under REQUIRE_ORACLES=1 (as CI sets it) a missing oracle is a failure, so CI can never
    pass by silently skipping the comparisons that prove correctness.
    """
    try:
        return importlib.import_module(module_name)
    except ImportError:
        message = f"oracle '{module_name}' is not installed (pip install -r requirements-oracle.txt)"
        if os.environ.get("REQUIRE_ORACLES") == "1":
            pytest.fail(message + " and REQUIRE_ORACLES=1 is set")
        pytest.skip(message)


def require_shared(relative_path):
    """Path to a file in ../shared, or skip when a fresh clone has no ../shared beside it."""
    path = SHARED / relative_path
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared is only beside the project's own checkout)")
    return path
