"""The ``vlselect`` command: thin calls into the packages. Each stage's commands live in their own module here
and are added by ``register(app)``; heavy imports (torch, transformers) happen inside the commands, so that
``vlselect --help`` stays fast."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from vlselect.errors import VlselectError

app = typer.Typer(
    name="vlselect",
    help="Data selection for visual instruction tuning: pool → features → select → train → evaluate → report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

err_console = Console(stderr=True)


def _hide_flag_type() -> None:
    """typer (0.2x) prints a ``<bool>`` type beside every on/off flag, as if the flag took a value; show none."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "_vlselect", False):
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag else shown(self, ctx)

    display_type_rich._vlselect = True
    TyperOption.display_type_rich = display_type_rich


_hide_flag_type()


def _version(value: bool) -> None:
    if value:
        from vlselect import __version__

        typer.echo(f"vlselect {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """vlselect: choose the visual-instruction-tuning data worth training on.

    Stages: [bold]world[/] (demo data) · [bold]pool[/] (read, check, stats) · [bold]models[/] · [bold]features[/]
    (activations, gradients, losses) · [bold]select[/] (COINCIDE, ICONS, TIVE, baselines) · [bold]train[/] ·
    [bold]eval[/] · [bold]bench[/]. Run [bold]vlselect demo[/] for the whole loop on built-in data.
    """


def _register_all() -> None:
    from vlselect.cli import bench, demo, evaluate, features, models, plan, pool, select, train, world

    for module in (demo, world, pool, models, features, select, train, evaluate, bench, plan):
        module.register(app)


_register_all()


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app; a :class:`VlselectError` is printed without a traceback and exits 2."""
    try:
        app(args=argv, prog_name="vlselect")
    except VlselectError as exc:
        from rich.text import Text

        # the message is printed literally: brackets (pip install 'vlselect[lmms]') are not rich markup
        err_console.print(Text("error:", style="bold red") + Text(" " + str(exc)), highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]: finished work is kept; run the same command again to resume")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
