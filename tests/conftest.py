import json
import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
VECTORS = FIXTURES / "vectors"


@pytest.fixture(scope="session")
def vectors() -> Path:
    return VECTORS


def load_json(rel: str):
    return json.loads((VECTORS / rel).read_text())


# -- property fuzzing profiles -------------------------------------------------------------
# CI runs every fuzz target on a fixed seed with a fixed budget ("ci", the default);
# BLINDBOX_FUZZ=long runs a hundred times as many random examples (docs/testing.md).
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", derandomize=True, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "long", derandomize=False, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("BLINDBOX_FUZZ", "ci"))
