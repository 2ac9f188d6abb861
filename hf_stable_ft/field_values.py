"""Field values parsed exactly as ``HfArgumentParser`` parses ``--FIELD value`` flags.

One converter for every place a user writes a ``StableTrainingArguments`` value outside Python: command-line
flags, ``--config`` JSON/YAML files and sweep recipe variants (``label=base:field=value``) — types, booleans
(true/false, yes/no, 1/0), choices and lists, with errors that name the field and what is allowed.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import types
import typing
from typing import Any

from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from .args import StableTrainingArguments

__all__ = ["convert_field_value", "field_value", "training_flag_parser"]


class _TrainingFlagParser(HfArgumentParser):
    """``HfArgumentParser`` whose errors are one line (not the usage of every ``TrainingArguments`` field)."""

    def error(self, message):
        if message.startswith("unrecognized arguments:"):
            known = [option for action in self._actions for option in action.option_strings]
            given = [token.split("=", 1)[0] for token in message.split(":", 1)[1].split() if token.startswith("--")]
            close = sorted({match for token in given for match in difflib.get_close_matches(token, known, n=2)})
            if close:
                message += f" (did you mean {' or '.join(close)}?)"
            message += "; every StableTrainingArguments / TrainingArguments field is a flag: --FIELD VALUE"
        self.exit(2, f"{self.prog}: error: {message}\n")


def training_flag_parser(prog: str = "hf-stable-ft") -> HfArgumentParser:
    """An ``HfArgumentParser`` over ``StableTrainingArguments`` that reports only the flags given (no defaults),
    never accepts abbreviations and keeps ``--no_FIELD`` for boolean fields whose default is True."""
    parser = _TrainingFlagParser(StableTrainingArguments, add_help=False, prog=prog, allow_abbrev=False)
    # HfArgumentParser adds ``--no_FIELD`` only for a literal ``True`` default; a recipe-controlled boolean whose
    # default stands behind a marker (``adam_bias_correction``) keeps its documented ``--no_`` flag here.
    options = {option for action in parser._actions for option in action.option_strings}
    hints = typing.get_type_hints(StableTrainingArguments)
    for item in dataclasses.fields(StableTrainingArguments):
        default = getattr(item.default, "value", item.default)
        if default is True and _allows(hints.get(item.name), bool) and f"--no_{item.name}" not in options:
            parser.add_argument(f"--no_{item.name}", f"--no-{item.name.replace('_', '-')}", action="store_false",
                                dest=item.name, help=f"set {item.name} to False")
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    return parser


def _allows(hint: Any, kind: type) -> bool:
    """Whether the type annotation ``hint`` admits values of ``kind`` (``X | None``, ``dict[str, bool]``, ...)."""
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return any(member is kind or typing.get_origin(member) is kind for member in members)


def _expected(action: argparse.Action) -> str:
    if action.choices is not None:
        return "one of " + ", ".join(str(choice) for choice in action.choices)
    if action.type is string_to_bool:
        return "true or false (also yes/no, 1/0)"
    kind = getattr(action.type, "__name__", "string") if action.type is not None else "string"
    return f"a list of {kind} values" if action.nargs in ("+", "*") else f"one {kind} value"


def convert_field_value(parser: HfArgumentParser, action: argparse.Action, hint: Any, value: Any, where: str) -> Any:
    """``value`` of a config file converted as ``--FIELD value`` would be (type, booleans, choices, nargs)."""
    if value is None:
        if _allows(hint, type(None)):
            return None
        raise ValueError(f"{where}: null is not allowed; expected {_expected(action)}")
    if isinstance(value, dict):
        if _allows(hint, dict):
            return value
        raise ValueError(f"{where}: a mapping ({value!r}) is not allowed; expected {_expected(action)}")
    if isinstance(value, list):
        if action.nargs not in ("+", "*"):
            raise ValueError(f"{where}: a list ({value!r}) is not allowed; expected {_expected(action)}")
        if not value and action.nargs == "+":
            raise ValueError(f"{where}: an empty list is not allowed; expected {_expected(action)}")
        items = value
    else:
        items = [value]
    strings = []
    for item in items:
        if isinstance(item, bool):
            strings.append("true" if item else "false")
        elif isinstance(item, (str, int, float)):
            strings.append(str(item))  # str(2e-05) == "2e-05": a native float converts back exactly
        else:
            raise ValueError(f"{where}: {item!r} ({type(item).__name__}) is not allowed; expected {_expected(action)}")
    try:
        return parser._get_values(action, strings)
    except (argparse.ArgumentError, ValueError) as error:
        message = getattr(error, "message", str(error))
        raise ValueError(f"{where}: {message}; expected {_expected(action)}") from None




@functools.lru_cache(maxsize=1)
def _flag_actions() -> tuple[HfArgumentParser, dict[str, argparse.Action], dict[str, Any]]:
    parser = training_flag_parser()
    actions = {action.dest: action for action in parser._actions if f"--{action.dest}" in action.option_strings}
    return parser, actions, typing.get_type_hints(StableTrainingArguments)


def field_value(name: str, value: Any, where: str | None = None) -> Any:
    """``value`` (text, or a native JSON/YAML value) for the field ``name``, converted as ``--name value`` would be.
    ``ValueError`` names ``where`` (default: the field) for an unknown field or a value of the wrong type."""
    parser, actions, hints = _flag_actions()
    if name not in actions:
        where = where.rsplit(": ", 1)[0] if where and where.endswith(f": {name}") else where
        close = difflib.get_close_matches(name, list(actions), n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"{where + ': ' if where else ''}{name!r} is not a StableTrainingArguments field{hint}")
    return convert_field_value(parser, actions[name], hints.get(name), value, where or name)
