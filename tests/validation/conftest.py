"""Fixtures of the validation tests: an installed bright-spot solution and labelled cases."""

from __future__ import annotations

from pathlib import Path

import pytest
from validation_support import CaseSet, write_case_set


@pytest.fixture
def case_set(tmp_path: Path) -> CaseSet:
    return write_case_set(tmp_path / "local")
