"""How `pawnet` commands are declared: one `error:` line for a PawnetError and for a flag
the parser refuses, and one flag per field of a settings dataclass (`Config`,
`ServeSettings`), generated from its declaration."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import typing
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

try:  # newer typer carries its own copy of click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:
    from click.exceptions import NoArgsIsHelpError, UsageError

from pawnet import quiet
from pawnet.errors import PawnetError, one_line


class OneLineErrors(TyperGroup):
    """The command group that reports what its parser refuses (an unknown flag, with the
    nearest ones; a value out of range; a missing argument) as one `error:` line with the
    command's help as the fix, exit code 2, like every other error."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as exc:
            typer.echo(exc.ctx.get_help())
            code = exc.exit_code
        except UsageError as exc:
            typer.echo(f"error: {_usage_message(exc)}", err=True)
            code = 2
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            code = 1
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def _usage_message(exc: UsageError) -> str:
    """What the parser refused, in one line ending in the fix."""
    where = " ".join(["pawnet", *(exc.ctx.command_path.split()[1:] if exc.ctx else [])])
    possible = getattr(exc, "possibilities", None)
    if possible:  # an unknown flag
        return (f"no such option {one_line(exc.option_name)}. Did you mean "
                f"{' or '.join(sorted(possible))}? Try: {where} --help")
    message = one_line(exc.format_message())
    return f"{message}{'' if message.endswith(('.', '?')) else '.'} Try: {where} --help"


def command(typer_app: typer.Typer, name: str, *, tensorflow: bool = True):
    """Register a command that prints a PawnetError as one `error:` line (exit code 2), exits
    130 on Ctrl-C, and imports TensorFlow quietly first when it needs it."""

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                if tensorflow:
                    quiet.import_quietly()
                return func(*args, **kwargs)
            except PawnetError as exc:
                typer.echo(f"error: {one_line(exc)}", err=True)
                raise typer.Exit(2) from None
            except KeyboardInterrupt:
                typer.echo("\ninterrupted", err=True)
                raise typer.Exit(130) from None

        return typer_app.command(name)(wrapper)

    return decorate


def _cli_type(hint: Any) -> type:
    """The type a flag parses: lists are given comma-separated."""
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    return str if typing.get_origin(base) in (list, tuple) else base


def _help(field: dataclasses.Field) -> str:
    """A field's help, with its choices and its default."""
    text = field.metadata["help"]
    if field.metadata.get("choices"):
        text += f" One of: {', '.join(field.metadata['choices'])}."
    default = field.default_factory() if callable(field.default_factory) else field.default
    if default not in (None, (), []):
        shown = ",".join(default) if isinstance(default, list) else default
        text += f" Default: {shown}."
    return text


def with_fields(cls: type, *, skip: tuple[str, ...] = ()):
    """Give a command taking `**values` one option per field of dataclass `cls`, with the
    field's help; a flag not given is None in `values`."""
    hints = typing.get_type_hints(cls)

    def decorate(func):
        signature = inspect.signature(func, eval_str=True)
        params = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        for f in dataclasses.fields(cls):
            if f.name not in skip:
                option = typer.Option(help=_help(f), show_default=False)
                params.append(inspect.Parameter(
                    f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                    annotation=Annotated[_cli_type(hints[f.name]) | None, option]))
        func.__signature__ = signature.replace(parameters=params)
        return func

    return decorate
