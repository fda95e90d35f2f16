"""What the command-line front doors share: the one-line error convention (exit code 2, for our errors and for
click's usage errors alike), help pages that read well at 80 columns, `--version`, torch set-up, the default
device, seed lists and turning SIGINT/SIGTERM into an orderly stop."""

from __future__ import annotations

import contextlib
import enum
import os
import re
import signal
import threading
from pathlib import Path
from typing import Annotated, Iterator, List, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from .locking import LockedError


class UsageError(ValueError):
    """Bad command-line input detected by the CLI itself."""


#: Errors that are always the user's input rather than a bug; front doors add their layers' own error types.
BASE_USER_ERRORS = (UsageError, FileNotFoundError, IsADirectoryError, PermissionError, LockedError)


@contextlib.contextmanager
def user_errors(extra: tuple = ()) -> Iterator[None]:
    """Turn expected bad-input errors into 'error: ...' on one line and exit code 2."""
    try:
        yield
    except BASE_USER_ERRORS + tuple(extra) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(2) from None


def setup_torch() -> None:
    import torch  # lazy: the front doors import this module at start-up; torch costs a second, --help needs none

    torch.set_flush_denormal(True)  # denormals make VGG/LPIPS and the generator much slower on CPU


def default_device() -> str:
    import torch  # lazy: see setup_torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class StopRequest:
    """A stop asked for by a signal: the first SIGINT or SIGTERM sets it (the job finishes what it is doing, e.g.
    the current training iteration, and stops cleanly); a second one raises KeyboardInterrupt at once.
    ``signum`` is the first signal received (None while no stop is asked)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """The shell's code for a job stopped by that signal (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + int(self.signum or signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(announce: bool = True) -> Iterator[StopRequest]:
    """Within the block, SIGINT and SIGTERM set the yielded :class:`StopRequest` instead of interrupting (with
    ``announce``, a line on stderr says so, written straight to the file descriptor: a handler must not re-enter
    a stream's buffer). A repeated signal raises KeyboardInterrupt (a hard stop). Main thread only (elsewhere the
    request is never set)."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def _flag(signum, frame):  # noqa: ARG001 - signal handler signature
        if stop.signum is not None:
            raise KeyboardInterrupt
        stop.signum = signum
        if announce:
            with contextlib.suppress(OSError):
                os.write(2, f"\n{signal.Signals(signum).name}: stopping cleanly after the current step; send it "
                            f"again to stop at once\n".encode())

    old_term = signal.signal(signal.SIGTERM, _flag)
    old_int = signal.signal(signal.SIGINT, _flag)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)


def parse_seeds(text: str) -> List[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11]."""
    seeds: List[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise UsageError(f"cannot parse seeds {text!r}: use a list like 0-15 or 1,5,9-12")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if hi < lo:
            raise UsageError(f"seed range {part!r} runs backwards")
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise UsageError("no seeds given")
    if max(seeds) >= 2**32:
        raise UsageError("seeds must be below 2**32 (numpy RandomState)")
    return seeds




# ----------------------------------------------------------------------------------------------------------------
# Help pages and usage errors.
#
# typer 0.29's rich help gives every option a type column (`<bool>` on flags, `<list[Path]>` on arguments even
# when a metavar is set: TyperArgument.display_type_rich ignores it) and squeezes six columns (long name, short
# name, negative long, negative short, type, help) into the terminal, so that long option names end in "…" at 80
# columns. The two classes below render one option per row as `-m, --model FILE` (metavar, or nothing on a flag;
# `--[no-]name` for a --name/--no-name pair) beside its help, in the panels the options name
# (`rich_help_panel`), and turn click's usage errors (unknown option, bad choice, missing value) into the
# one-line `error: ...` convention with exit code 2.


def package_version(dist: str = "stylegan-forensics") -> str:
    """The installed version of this package (``unknown`` when it runs from a source tree not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


#: Widest help page, whatever the terminal (long lines read badly).
MAX_HELP_WIDTH = 100


def _option_names(param) -> str:
    shorts = [o for o in param.opts if not o.startswith("--")]
    longs = [o for o in param.opts if o.startswith("--")]
    neg = list(param.secondary_opts)
    if len(longs) == 1 and len(neg) == 1 and neg[0] == "--no-" + longs[0][2:]:
        longs, neg = ["--[no-]" + longs[0][2:]], []
    names = ", ".join(shorts + longs)
    if neg:
        names += " / " + ", ".join(neg)
    return names


def _metavar(param) -> str:
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    if param.metavar is not None:
        name = param.metavar
    else:
        annotation = param.type_descriptor.annotation
        choices = getattr(annotation, "__members__", None)
        if choices:
            name = "[" + "|".join(str(m.value) for m in choices.values()) + "]"
        else:
            name = getattr(annotation, "__name__", "VALUE").upper()
    if param.param_type_name == "argument" and param.nargs != 1:
        name += "..."
    return name


def _default_text(param) -> Optional[str]:
    if param.param_type_name == "argument" or param.required or param.show_default is False:
        return None
    default = param.default
    if callable(default) or default is None or default == [] or default == ():
        return None
    if isinstance(default, bool):
        if not param.secondary_opts:
            return None  # a plain flag: off unless given
        return param.opts[-1] if default else param.secondary_opts[-1]
    if isinstance(default, enum.Enum):
        default = default.value
    return str(default)


def _usage_line(cmd, ctx) -> str:
    pieces = []
    params = [p for p in cmd.get_params(ctx) if not getattr(p, "hidden", False)]
    if any(p.param_type_name == "option" for p in params):
        pieces.append(cmd.options_metavar or "[OPTIONS]")
    for p in params:
        if p.param_type_name == "argument":
            name = _metavar(p)
            pieces.append(name if p.required else f"[{name}]")
    if getattr(cmd, "subcommand_metavar", None):
        pieces.append(cmd.subcommand_metavar)
    return f"Usage: {ctx.command_path} " + " ".join(pieces)


def render_help(cmd, ctx) -> None:
    """Print the help page of a command or group (see the note above)."""
    import inspect

    from rich.console import Console
    from rich.padding import Padding
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    probe = Console()
    console = Console(width=min(probe.width, MAX_HELP_WIDTH), highlight=False)
    console.print(Padding(Text(_usage_line(cmd, ctx), style="bold"), (1, 1, 1, 1)))
    if cmd.help:
        first, *rest = inspect.cleandoc(cmd.help).split("\f")[0].split("\n\n")
        body = Text(" ".join(first.split()))
        for paragraph in rest:
            body.append("\n\n" + " ".join(paragraph.split()), style="dim")
        console.print(Padding(body, (0, 1, 1, 1)))

    panels: "dict[str, list]" = {"Arguments": [], "Options": []}
    for p in cmd.get_params(ctx):
        if getattr(p, "hidden", False):
            continue
        default_panel = "Arguments" if p.param_type_name == "argument" else "Options"
        panels.setdefault(getattr(p, "rich_help_panel", None) or default_panel, []).append(p)

    def names_of(p) -> Text:
        if p.param_type_name == "argument":
            return Text(_metavar(p), style="bold cyan")
        names = Text(_option_names(p), style="bold cyan")
        mv = _metavar(p)
        if mv:
            names.append(" " + mv, style="yellow")
        return names

    width = max((len(names_of(p)) for params in panels.values() for p in params), default=0)
    for title, params in panels.items():
        if not params:
            continue
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(width=1, no_wrap=True)
        table.add_column(no_wrap=True, min_width=width + 1)  # one panel's names line up with the next's
        table.add_column(ratio=1, overflow="fold")
        for p in params:
            names = names_of(p)
            help_text = Text(" ".join((p.help or "").split()))
            default = _default_text(p)
            if default is not None:
                help_text.append(f" [default: {default}]", style="dim")
            if p.required:
                help_text.append(" [required]", style="dim red")
            table.add_row(Text("*", style="red") if p.required else "", names, help_text)
        console.print(Panel(table, title=title, title_align="left", border_style="dim"))

    commands = getattr(cmd, "commands", None)
    if commands:
        table = Table.grid(padding=(0, 2), expand=True)
        table.add_column(no_wrap=True, style="bold cyan")
        table.add_column(ratio=1)
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            summary = inspect.cleandoc(sub.short_help or sub.help or "").split("\n\n")[0]
            table.add_row(name, " ".join(summary.split()))
        console.print(Panel(table, title="Commands", title_align="left", border_style="dim"))


def _one_line_usage_error(exc) -> "typer.Exit":
    """Print click's usage error as `error: ...` (one line, with where to find help) and return Exit(2)."""
    msg = " ".join(exc.format_message().split())
    msg = msg[:-1] if msg.endswith(".") else msg
    ctx = getattr(exc, "ctx", None)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    typer.echo(f"error: {msg}{hint}", err=True)
    return typer.Exit(2)


def _is_plain_usage_error(exc: BaseException) -> bool:
    from typer._click import exceptions  # vendored click of typer 0.29 (pyproject bounds typer to <0.30)

    return isinstance(exc, exceptions.UsageError) and not isinstance(exc, exceptions.NoArgsIsHelpError)


class _OurHelp:
    """Our help page and one-line usage errors, for commands and groups alike."""

    def format_help(self, ctx, formatter) -> None:
        render_help(self, ctx)

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except Exception as exc:
            if _is_plain_usage_error(exc):
                raise _one_line_usage_error(exc) from None
            raise


class Command(_OurHelp, TyperCommand):
    """A command with our help page and one-line usage errors (``app.command(cls=Command)``)."""


class Group(_OurHelp, TyperGroup):
    """A group of commands with our help page and one-line usage errors (``typer.Typer(cls=Group)``)."""

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except Exception as exc:
            if _is_plain_usage_error(exc):
                raise _one_line_usage_error(exc) from None
            raise


def new_app(help: str, prog: str) -> typer.Typer:
    """A front door: our help pages, one-line usage errors, `--version`, no shell-completion options."""
    app = typer.Typer(cls=Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                      help=help)

    def show_version(value: bool) -> None:
        if value:
            typer.echo(f"{prog} (stylegan-forensics) {package_version()}")
            raise typer.Exit()

    @app.callback()
    def _root(version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                           help="Print the version and exit.")) -> None:
        pass

    return app


def sub_app(help: str) -> typer.Typer:
    """A group of sub-commands (e.g. `stylegan metrics`) with our help pages."""
    return typer.Typer(cls=Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                       help=help)


def command(app: typer.Typer, name: Optional[str] = None, **kwargs):
    """``@command(app)``: register a command with our help page (``app.command(cls=Command)``)."""
    return app.command(name, cls=Command, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Options every front door spells the same way (typer's Annotated form: ``device: DeviceOption = None``).

DeviceOption = Annotated[Optional[str], typer.Option(
    "--device", metavar="DEVICE", help="cpu, cuda, cuda:1 ... (default: cuda if available).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of text.")]
ModelOption = Annotated[Path, typer.Option(
    "--model", "-m", metavar="FILE", help="Model file: our .pt, NVIDIA .pkl or rosinality .pt.")]


def deprecated_alias(old: str, new: str, value, current, default=None):
    """The value of an option given under its old name ``old`` (hidden), with a warning; ``current`` wins when
    both are given."""
    if value is None:
        return current
    typer.echo(f"warning: {old} is deprecated; use {new}", err=True)
    return value if current == default else current
