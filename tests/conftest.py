import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
VECTORS = FIXTURES / "vectors"


@pytest.fixture(scope="session")
def vectors() -> Path:
    return VECTORS


def load_json(rel: str):
    return json.loads((VECTORS / rel).read_text())
