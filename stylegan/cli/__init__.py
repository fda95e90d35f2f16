"""`stylegan`: generate images, inspect and convert model files, build datasets, train, measure.

A thin layer: each command parses its options, calls one library function and prints. Bad input ends in a
one-line error on stderr and exit code 2; progress goes to stderr, results (text, or JSON with --json) to stdout.
The library is imported inside each command, not at the top of the modules: `--help` and `--version` then
answer in ~0.2 s instead of the ~2 s that importing torch takes.
"""

from __future__ import annotations

from ..util.cli_support import new_app

app = new_app("StyleGAN2 networks: generate, inspect, convert, build datasets, train and measure.", prog="stylegan")

# Imported after `app` exists: the command modules register their commands on it.
from . import dataset, metrics, models, train  # noqa: E402,F401
from .options import Arch, Crop, NoiseMode, Preset, Sampling, Space  # noqa: E402,F401  (the choices, for tests)

#: The order `stylegan --help` lists the commands in.
COMMAND_ORDER = ("generate", "info", "convert", "init", "dataset", "train")
app.registered_commands.sort(key=lambda c: COMMAND_ORDER.index(c.name or c.callback.__name__))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
