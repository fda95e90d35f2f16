"""`detect`: attribute suspect images to a StyleGAN network by projection (StyleGAN2 §5, App. D).

Thin: each command parses its options, calls the library and prints. Bad input ends in a one-line error on
stderr and exit code 2; a verdict, whichever it is, exits 0. Shared options live in :mod:`detector.cli.options`;
each command module registers its commands on :data:`app`.
The library is imported inside each command, not at the top of the modules: `--help` and `--version` then
answer in ~0.2 s instead of the ~2 s that importing torch takes.
"""

from __future__ import annotations

from stylegan.util.cli_support import new_app

app = new_app("Tell whether images were made by a given StyleGAN network (StyleGAN2 §5: project, re-synthesise, "
              "measure LPIPS).", prog="detect")

# Imported after `app` exists: the command modules register their commands on it.
from . import calibrate, cases, check, demo_cmd, fetch_weights, score  # noqa: E402,F401

#: The order `detect --help` lists the commands in: the everyday ones first.
COMMAND_ORDER = ("check", "calibrate", "batch", "report", "score", "demo", "fetch-weights")
app.registered_commands.sort(key=lambda c: COMMAND_ORDER.index(c.name or c.callback.__name__))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
