"""The code base's own rules, checked on its source: no import cycles, modules and functions
that fit in a head, one name per setting on the CLI, in YAML and in Python, no message that
names a flag which does not exist, and every user error a PawnetError."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest
import typer

import pawnet
from pawnet.config import Config, resolve_config
from pawnet.errors import PawnetError
from pawnet.serve.settings import ServeSettings

SRC = Path(pawnet.__file__).parent
MODULES = {  # module name -> source file
    "pawnet" + "".join(f".{part}" for part in path.relative_to(SRC).with_suffix("").parts
                       if part != "__init__"): path
    for path in sorted(SRC.rglob("*.py"))
}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
NOT_PAWNET_FLAGS = {"--force-reinstall"}  # pip's, in "pip install --force-reinstall ..."


def _imports(name: str, path: Path) -> set[str]:
    """The pawnet modules that a module imports, anywhere in it (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:  # `from pawnet.data import scan` imports a module
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


def test_no_import_cycles():
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    state: dict[str, str] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*trail[trail.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_nothing_outside_the_cli_imports_it():
    importers = [name for name, path in MODULES.items() if not name.startswith("pawnet.cli")
                 and any(m.startswith("pawnet.cli") for m in _imports(name, path))]
    assert importers == []


def test_modules_and_functions_fit_in_a_head():
    too_long = []
    for name, path in MODULES.items():
        source = path.read_text()
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert not too_long, too_long


def _commands(group, prefix: str = ""):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group of commands
            yield from _commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


CLI = typer.main.get_command(importlib.import_module("pawnet.cli").app)
COMMANDS = dict(_commands(CLI))


def _flags(command) -> set[str]:
    return {opt for param in command.params for opt in param.opts if opt.startswith("--")}


def _names(command) -> set[str]:
    return {param.name for param in command.params}


def test_every_training_setting_is_a_flag_a_yaml_key_and_a_keyword():
    train = COMMANDS["train"]
    for field in dataclasses.fields(Config):
        assert field.name in _names(train), field.name
        if field.name != "photos":  # the PHOTOS argument
            assert "--" + field.name.replace("_", "-") in _flags(train), field.name
    values = {"epochs": 3, "image_size": 64, "augment": ["flip"], "fine_tune_lr": 1e-3}
    assert resolve_config(values) == resolve_config(**values)  # YAML keys = keywords
    assert "settings" in inspect.signature(pawnet.train).parameters  # any field, by name


def test_every_serve_setting_is_a_flag():
    serve = COMMANDS["serve"]
    for field in dataclasses.fields(ServeSettings):
        assert "--" + field.name.replace("_", "-") in _flags(serve), field.name


def test_trained_model_argument_and_json_are_spelled_one_way():
    for name in ("evaluate", "predict", "serve"):
        first = next(p for p in COMMANDS[name].params if p.param_type_name == "argument")
        assert (first.name, first.metavar) == ("model", "MODEL"), name
    for name in ("data check", "evaluate", "predict", "bench"):
        assert "--json" in _flags(COMMANDS[name]), name


def _string_constants() -> list[tuple[str, str]]:
    found = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append((name, node.value))
    return found


def test_no_message_names_a_flag_that_does_not_exist():
    known = set().union(*(_flags(c) for c in COMMANDS.values()), _flags(CLI), {"--help"},
                        NOT_PAWNET_FLAGS)
    named = {(module, flag) for module, text in _string_constants()
             for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text)}
    assert named, "the search found no flag at all"
    assert sorted(f"{module}: {flag}" for module, flag in named if flag not in known) == []


def _pawnet_classes():
    for info in pkgutil.walk_packages(pawnet.__path__, "pawnet."):
        if info.name == "pawnet.cli":
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if inspect.isclass(value) and value.__module__ == info.name:
                yield value


@pytest.mark.parametrize("cls", [c for c in _pawnet_classes() if c.__name__.endswith("Error")],
                         ids=lambda c: c.__name__)
def test_every_error_class_is_a_pawnet_error(cls):
    assert issubclass(cls, PawnetError)


def test_the_public_api_is_what_all_lists():
    for name in pawnet.__all__:
        assert getattr(pawnet, name) is not None, name
    assert {"train", "evaluate", "load", "Predictor", "Prediction", "Config"} <= set(
        pawnet.__all__)
