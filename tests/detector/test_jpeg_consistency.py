"""The JPEG-consistency refinement (detector/jpeg_consistency.py) on the 16 px test generator."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from detector.jpeg import DifferentiableJpeg, estimate_jpeg_quality
from detector.jpeg_coefficients import read_jpeg_coefficients
from detector.jpeg_consistency import ConsistencySettings, refine_consistency
from detector.results import TRACE_DTYPE, ProjectionResult
from tests.conftest import tiny_network


def mse(a, b):
    return (a - b).pow(2).flatten(1).mean(1)


def as_result(w: torch.Tensor, noise) -> ProjectionResult:
    return ProjectionResult(w=w.detach().clone(), noise=tuple(n[0].detach().clone() for n in noise), distance=0.0,
                            loss_trace=np.zeros(0, dtype=TRACE_DTYPE), image=torch.zeros(3, 16, 16), steps_run=0)


def test_refinement_moves_a_wrong_start_towards_consistency(tmp_path):
    G = tiny_network(tmp_path / "g.pt")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.z_dim, generator=gen))
        noise = [torch.randn(1, 1, *s[-2:], generator=gen) for s in G.synthesis.noise_shapes]
        img = G.synthesis(ws, noise=noise)
    arr = ((img[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=50)
    decoded = Image.open(io.BytesIO(buf.getvalue()))
    jpeg = DifferentiableJpeg(estimate_jpeg_quality(decoded))
    target = torch.from_numpy(np.array(decoded.convert("RGB"))).permute(2, 0, 1)[None].float() / 127.5 - 1
    settings = ConsistencySettings(steps=60, lr=0.05, weight=100.0)

    at_truth = refine_consistency(G, as_result(ws[0], noise), target, jpeg, mse, ConsistencySettings(steps=0))
    assert at_truth.residual == at_truth.residual_before and at_truth.distance == at_truth.distance_before
    assert at_truth.intervals == "decoded pixels"
    # with the file's own integers the re-synthesis that made it (before 8-bit rounding) is consistent
    from_file = refine_consistency(G, as_result(ws[0], noise), target, jpeg, mse, ConsistencySettings(steps=0),
                                   read_jpeg_coefficients(buf.getvalue()))
    assert from_file.intervals == "file" and from_file.residual < 1e-6 < at_truth.residual / 1000  # 0.0 and 0.025
    wrong_w = ws[0] + 0.5 * torch.randn(ws.shape[1:], generator=gen)
    wrong = refine_consistency(G, as_result(wrong_w, [torch.randn_like(n) for n in noise]), target, jpeg, mse,
                               settings)
    # the image that made the file is (nearly) consistent with it; a wrong start is far outside, and the
    # refinement brings it much closer
    assert wrong.residual_before > 20 * at_truth.residual_before
    assert wrong.residual < wrong.residual_before / 4 and wrong.distance < wrong.distance_before
    assert wrong.settings == settings.to_dict()
    assert all(p.requires_grad for p in G.parameters())  # the generator's own flags come back


def test_one_image_at_the_network_size_only(tmp_path):
    G = tiny_network(tmp_path / "g.pt")
    ws = G.mapping(torch.randn(1, G.z_dim)).detach()
    noise = [torch.randn(1, 1, *s[-2:]) for s in G.synthesis.noise_shapes]
    with pytest.raises(ValueError):
        refine_consistency(G, as_result(ws[0], noise), torch.zeros(2, 3, 16, 16), DifferentiableJpeg(75), mse)
    with pytest.raises(ValueError):
        ConsistencySettings(steps=-1)
