"""Shared test helpers.

Fixtures from ``../shared`` (parity tensors, LPIPS weights, real photos) are found through ``STYLEGAN_SHARED``
(default: the ``shared`` folder beside the repository). Where they are missing a test skips, unless
``STYLEGAN_REQUIRE_SHARED=1`` (set by ``.ci/run``), in which case it fails.
"""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STYLEGAN_SHARED", REPO.parent / "shared"))

torch.set_flush_denormal(True)


def shared_file(rel: str) -> Path:
    """Path of a file under the shared folder; skips (or fails under STYLEGAN_REQUIRE_SHARED=1) if absent."""
    path = SHARED / rel
    if not path.exists():
        msg = f"shared fixture missing: {path}"
        if os.environ.get("STYLEGAN_REQUIRE_SHARED") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def shared():
    return shared_file


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
