"""How much of a projection do the noise maps carry (issue 24)? Runs :mod:`inversion_methods` with the noise maps
held at their random draw: the projector's Adam is replaced, for this process only, by one that steps w alone
(the maps are still renormalised, which leaves a unit-variance draw as it is). Compare with the same images
projected by the default (``inversion_methods.py --method lr02:``).

    python benchmarks/frozen_noise_probe.py --model F.pt --real real_dev40 --n-gen 4 --n-real 4 --steps 1000 \\
        --batch 4 --state frozen.jsonl

Every argument is passed to ``inversion_methods.py``; the method is ``frozen`` (no overrides). Prints its JSON.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import detector.projector as projector_module  # noqa: E402
from detector.batching import _RowAdam  # noqa: E402


class WOnlyAdam(_RowAdam):
    """Adam on w (the first parameter) only: the noise maps keep their values."""

    @torch.no_grad()
    def step(self, lr: float) -> None:
        maps = [p.detach().clone() for p in self.params[1:]]
        super().step(lr)
        for p, m in zip(self.params[1:], maps):
            p.copy_(m)


def main() -> None:
    projector_module._RowAdam = WOnlyAdam
    import inversion_methods

    sys.argv = [sys.argv[0], *sys.argv[1:], "--method", "frozen:"]
    inversion_methods.main()


if __name__ == "__main__":
    main()
