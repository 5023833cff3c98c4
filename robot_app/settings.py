"""Settings of the long-running commands: flags over the environment over a --config YAML file over the defaults, in
one pydantic-settings model built from the command's own flags; a run writes what it resolved, to be fed back."""

from __future__ import annotations

import argparse
import difflib
import os
import time
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BeforeValidator, ValidationError, create_model
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from robot_app.common.files import describe_validation, read_yaml_mapping, write_atomic

NOT_SETTINGS = {"help", "version", "config", "verbose", "handler", "command"}
NOT_RECORDED = {"resume", "overwrite"}  # how a run starts, not what it is: a fed-back file starts a new run


def env_prefix(command: str) -> str:
    return f"ROBOT_APP_{command.upper().replace('-', '_')}_"


def defer_required(parser: argparse.ArgumentParser) -> None:
    """A flag the command requires may come from the file or the environment instead: the settings model requires it."""
    for action in parser._actions:
        if action.required and action.option_strings:
            action.required, action.setting_required = False, True


def given_on_command_line(parser: argparse.ArgumentParser, argv: list[str]) -> dict[str, Any]:
    """The settings the command line gives explicitly (parsed again with every default suppressed)."""
    for action in _all_actions(parser):
        action.default = argparse.SUPPRESS
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if k not in NOT_SETTINGS}


def resolve(command: str, parser: argparse.ArgumentParser, given: dict[str, Any], config: str | None) -> BaseSettings:
    """The command's settings: `given` flags, then ROBOT_APP_<COMMAND>_<FLAG> variables, then the `config` file."""
    from_file = read_yaml_mapping(Path(config), f"{command} config") if config else {}
    model = _model(command, parser, from_file)
    prefix = env_prefix(command)
    variable_of = {field: prefix + field.upper() for field in model.model_fields}
    variables = {name for name in os.environ if name.startswith(prefix)}
    unknown = sorted(variables - set(variable_of.values()))
    if unknown:
        near = difflib.get_close_matches(unknown[0], variable_of.values(), n=1)
        raise ValueError(f"{unknown[0]}: no {command} setting of that name"
                         + (f" (did you mean {near[0]}?)" if near else ""))
    try:
        return model(**{k: v for k, v in given.items() if k in model.model_fields})  # not a sub-command's own
    except ValidationError as error:
        sources = f"flags, {prefix}* variables" + (f" and {config}" if config else "")
        missing = [f"--{e['loc'][0].replace('_', '-')}" for e in error.errors() if e["type"] == "missing"]
        hint = f" (give {', '.join(missing)} as a flag, in a --config file or as a variable)" if missing else ""
        names = {field: f"--{field.replace('_', '-')}" if field in given else
                 variable_of[field] if variable_of[field] in variables else
                 f"{config}: {field}" if field in from_file else field for field in model.model_fields}
        raise ValueError(f"{command} settings ({sources}): "
                         f"{describe_validation(error, known=model.model_fields, names=names)}{hint}") from None


def record(settings: BaseSettings, command: str, folder: str | Path) -> Path:
    """Write the resolved settings as YAML in `folder`; `robot-app COMMAND --config` that file runs the same again."""
    path = Path(folder) / f"robot-app-{command}.yaml"
    values = settings.model_dump(exclude=NOT_RECORDED)
    header = (f"# robot-app {command}, as resolved on {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}.\n"
              f"# `robot-app {command} --config {path}` runs it again; flags and {env_prefix(command)}* variables "
              "override it.\n")
    write_atomic(path, (header + yaml.safe_dump(values, sort_keys=False)).encode())
    return path


def _all_actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_actions(sub)


def _model(command: str, parser: argparse.ArgumentParser, from_file: dict) -> type[BaseSettings]:
    fields: dict[str, Any] = {}
    for action in parser._actions:
        if action.dest in NOT_SETTINGS or action.dest == argparse.SUPPRESS or \
                isinstance(action, argparse._SubParsersAction):  # a sub-command's own flags are not settings
            continue
        flag = action.nargs == 0  # store_true and --x/--no-x
        annotation = bool if flag else Annotated[Any, BeforeValidator(_converter(action))]
        if isinstance(action, argparse._AppendAction):  # repeatable: a YAML list, or a JSON one in the environment
            annotation = list[annotation] | None
        required = action.required or getattr(action, "setting_required", False)
        fields[action.dest] = (annotation, ... if required else action.default)

    class FileSource(PydanticBaseSettingsSource):
        def get_field_value(self, field, field_name):
            return from_file.get(field_name), field_name, False

        def __call__(self) -> dict[str, Any]:
            return dict(from_file)

    class CommandSettings(BaseSettings):
        model_config = SettingsConfigDict(env_prefix=env_prefix(command), extra="forbid")

        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                       file_secret_settings):
            return init_settings, env_settings, FileSource(settings_cls)

    return create_model(f"{command.title().replace('-', '')}Settings", __base__=CommandSettings, **fields)


def _converter(action: argparse.Action):
    """A value from the file or the environment checked as its flag's own type checks the command line's."""
    convert = action.type or str

    def check(value):
        if value is None or value is action.default:
            return value
        try:
            converted = convert(str(value))
        except (argparse.ArgumentTypeError, ValueError, TypeError) as error:
            plain = convert in (int, float)  # Python's own message ("invalid literal for int() ...") says less
            raise ValueError(f"invalid {convert.__name__} value" if plain else str(error)) from None
        if action.choices is not None and converted not in action.choices:
            raise ValueError(f"{converted!r} is not one of {list(action.choices)}")
        return converted

    return check
