"""`detect`: attribute suspect images to a StyleGAN network by projection (StyleGAN2 §5, App. D).

Thin: each command parses its options, calls the library and prints. Bad input ends in a one-line error on
stderr and exit code 2; a verdict, whichever it is, exits 0. Shared options live in :mod:`detector.cli.options`;
each command module registers its commands on :data:`app`.
"""

from __future__ import annotations

from stylegan.util.cli_support import new_app

app = new_app("Tell whether images were made by a given StyleGAN network (StyleGAN2 §5: project, re-synthesise, "
              "measure LPIPS).", prog="detect")

# The commands register themselves on `app`, in the order `detect --help` lists them.
from . import check  # noqa: E402,F401
from . import calibrate  # noqa: E402,F401
from . import cases  # noqa: E402,F401
from . import score  # noqa: E402,F401
from . import demo_cmd  # noqa: E402,F401
from . import fetch_weights  # noqa: E402,F401
from .options import projector_settings  # noqa: E402,F401  (re-exported: the lead's scripts may use it)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
