"""How the CLI reports what went wrong: one line on stderr (one JSON object with ``--json``) and an exit code.

Every error of a command ends as a :class:`CliError` (a message, the flag at fault if there is one,
and an exit code) and is written by :func:`report` alone, so every command says it the same way:
``error: --flag: rule (got value)`` on one line, never wrapped (even when stderr is not a
terminal), never a pydantic dump or a traceback. Exit codes: :data:`EXIT_FAILURE` for a failure,
:data:`EXIT_USAGE` for a wrong invocation (including a flag value that breaks a rule, which is
checked before anything connects); commands keep their own codes for the rest (3, 4, 130).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, TextIO, cast

import typer
from pydantic import TypeAdapter, ValidationError

from coord.errors import CorralError, InvalidInput
from coord.ids import Token
from coord.settings import Settings
from coord.validation import rule

__all__ = [
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "CliError",
    "check_setting",
    "check_tokens",
    "from_click",
    "from_validation",
    "report",
    "run_cli",
    "usage",
    "wants_json",
    "warn",
]

EXIT_FAILURE = 1
"""Exit code of a command that failed (or of a task that failed)."""
EXIT_USAGE = 2
"""Exit code of a wrong invocation: unknown or missing flag, a value breaking a rule, flags that exclude each other."""
EXIT_INTERRUPTED = 130
"""Exit code after Ctrl-C."""

DEBUG_ENV = "CORRAL_DEBUG"
"""With this variable set to 1, an unexpected exception (not a CorralError) is shown with its traceback."""


class CliError(CorralError):
    """A failure the CLI reports as one line and then exits with :attr:`code`.

    :attr:`message` says what is wrong and the rule; :attr:`field` is the flag (or argument,
    or environment variable) at fault, if one is. ``str()`` is the line as printed.
    """

    def __init__(self, message: str, *, code: int = EXIT_FAILURE, field: str | None = None) -> None:
        self.message = " ".join(message.split())
        self.code = code
        self.field = field
        super().__init__(f"{field}: {self.message}" if field else self.message)


def usage(message: str, field: str | None = None) -> CliError:
    """A :class:`CliError` for a wrong invocation (exit :data:`EXIT_USAGE`)."""
    return CliError(message, code=EXIT_USAGE, field=field)


def _flag(loc: tuple[int | str, ...], flags: Mapping[str, str] | Callable[[str], str] | None) -> str | None:
    if not loc:
        return None
    path = ".".join(str(part) for part in loc)
    if flags is None:
        return path
    if callable(flags):
        return flags(path)
    return flags.get(path, flags.get(str(loc[0]), path))


def from_validation(
    err: ValidationError, flags: Mapping[str, str] | Callable[[str], str] | None = None, *, code: int = EXIT_USAGE
) -> CliError:
    """``err`` as one :class:`CliError`: each problem as ``flag: rule``, fields named by ``flags``.

    The error's :attr:`~CliError.field` is the flag of the first problem.
    """
    problems = err.errors(include_url=False)
    named = [(_flag(p["loc"], flags), rule(p)) for p in problems]
    if len(named) == 1:
        field, text = named[0]
        return CliError(text, code=code, field=field)
    parts = [f"{field}: {text}" if field else text for field, text in named]
    return CliError("; ".join(parts), code=code, field=named[0][0] if named else None)


def _click_class(name: str) -> type[Exception]:
    # typer re-exports only BadParameter of click's exceptions (and vendors click in recent
    # versions): its bases are the classes to catch, whichever click it runs on.
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == name and issubclass(cls, Exception):
            return cls
    raise LookupError(name)  # pragma: no cover - click's hierarchy has both


_CLICK_EXCEPTION = _click_class("ClickException")
_USAGE_ERROR = _click_class("UsageError")


def _hint(param: object) -> str | None:
    opts = getattr(param, "opts", None)
    if getattr(param, "param_type_name", "") == "option" and opts:
        return str(max(opts, key=len))
    name = getattr(param, "human_readable_name", None)
    return str(name).upper() if name else None


def from_click(err: Exception) -> CliError:
    """A click/typer usage error (unknown option, bad value, missing argument) as one :class:`CliError`.

    A value typer checked with pydantic (``min=``, ``max=``, a number) is said as :func:`rule` says it.
    """
    code = int(getattr(err, "exit_code", EXIT_USAGE))
    kind = type(err).__name__
    if isinstance(err, typer.BadParameter):
        hint = err.param_hint
        field = hint if isinstance(hint, str) else _hint(err.param)
        if kind == "MissingParameter":
            return CliError("is required", code=code, field=field)
        cause = err.__cause__
        if isinstance(cause, ValidationError) and cause.errors():
            return CliError(rule(cause.errors(include_url=False)[0]), code=code, field=field)
        return CliError(err.message, code=code, field=field)
    format_message: Callable[[], str] = getattr(err, "format_message", lambda: str(err))
    if kind == "NoSuchOption":
        possibilities = sorted(getattr(err, "possibilities", None) or [])
        maybe = f" (did you mean {' or '.join(possibilities)}?)" if possibilities else ""
        return CliError(f"no such option{maybe}", code=code, field=getattr(err, "option_name", None))
    return CliError(format_message(), code=code)


# --- checks made before connecting ---------------------------------------------------------------


def _about(flag: str, err: ValidationError) -> CliError:
    return usage(rule(err.errors(include_url=False)[0]), field=flag)


def check_setting(flag: str, name: str, value: object) -> None:
    """Raise a usage :class:`CliError` naming ``flag`` unless ``value`` obeys the rule of ``Settings.name``.

    ``None`` (flag not given) passes: the settings' own value applies.
    """
    if value is None:
        return
    field = Settings.model_fields[name]
    adapter: TypeAdapter[Any] = TypeAdapter(cast(Any, Annotated)[(field.annotation, *field.metadata)])
    try:
        adapter.validate_python(value)
    except ValidationError as err:
        raise _about(flag, err) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (only finite numbers are)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large a number for JSON (it would be infinity)")
    return value


def parse_json(flag: str, text: str | None) -> Any:
    """The JSON value ``text`` holds (None when not given); a usage :class:`CliError` naming ``flag`` if not JSON.

    Strict JSON: ``NaN``, ``Infinity`` and numbers too large for a float (``1e999``) are refused
    (Python's ``json`` accepts them, and pydantic would store them as ``null``).
    """
    if text is None:
        return None
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except ValueError as err:  # a JSONDecodeError, or a constant or number refused above
        raise usage(f"not valid JSON: {err}", flag) from None


_TOKEN: TypeAdapter[str] = TypeAdapter(Token)


def check_tokens(values: Mapping[str, str | Sequence[str] | None]) -> None:
    """Raise a usage :class:`CliError` naming the flag of the first value that is not a valid id.

    ``values`` maps each flag to its value (a list for a repeatable flag; ``None``: not given).
    """
    for flag, value in values.items():
        for item in [value] if isinstance(value, str) else (value or []):
            try:
                _TOKEN.validate_python(item)
            except ValidationError as err:
                raise _about(flag, err) from None


# --- writing ------------------------------------------------------------------------------------


def wants_json(args: Sequence[str]) -> bool:
    """True when ``--json`` is among ``args`` before a ``--`` (after it, the words are a command's)."""
    for arg in args:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def report(err: CliError, *, as_json: bool, stream: TextIO | None = None) -> None:
    """Write ``err`` on ``stream`` (stderr): ``error: ...`` or ``{"error", "field", "code"}``, one line."""
    out = stream or sys.stderr
    if as_json:
        line = json.dumps({"error": str(err), "field": err.field, "code": err.code})
    else:
        red, plain = ("\x1b[1;31m", "\x1b[0m") if out.isatty() and "NO_COLOR" not in os.environ else ("", "")
        line = f"{red}error:{plain} {' '.join(str(err).split())}"
    out.write(line + "\n")
    out.flush()


def warn(message: str, *, as_json: bool, stream: TextIO | None = None) -> None:
    """Write a warning on ``stream`` (stderr) as one line, or as ``{"warning": ...}`` with ``--json``."""
    out = stream or sys.stderr
    text = " ".join(message.split())
    out.write((json.dumps({"warning": text}) if as_json else f"warning: {text}") + "\n")
    out.flush()


def run_cli(command: Any, args: Sequence[str], *, prog_name: str | None = None) -> int:
    """Run the click ``command`` with ``args``; return its exit code, having reported any error as one line.

    ``--json`` among ``args`` makes the error a JSON object. An exception that is no
    :class:`~coord.errors.CorralError` (a bug, or a user's module failing on import) is one
    line too, ``unexpected ...`` with exit 1; ``CORRAL_DEBUG=1`` shows its traceback instead.
    """
    as_json = wants_json(args)
    try:
        code = command.main(list(args), prog_name=prog_name, standalone_mode=False)
    except _USAGE_ERROR as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # a group run bare: its help (typer printed it), exit 2
            text = str(getattr(err, "format_message", str)())
            if text.strip():
                sys.stdout.write(text + "\n")
            return EXIT_USAGE
        failure = from_click(err)
    except _CLICK_EXCEPTION as err:
        failure = from_click(err)
    except typer.Abort:
        failure = CliError("aborted", code=EXIT_FAILURE)
    except CliError as err:
        failure = err
    except InvalidInput as err:
        failure = usage(str(err))
    except CorralError as err:
        failure = CliError(str(err))
    except ValidationError as err:
        failure = from_validation(err)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as err:  # a bug: still one line, unless asked for the traceback
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        failure = CliError(f"unexpected {type(err).__name__}: {err} ({DEBUG_ENV}=1 shows the traceback)")
    else:
        return code if isinstance(code, int) else 0
    report(failure, as_json=as_json)
    return failure.code
