"""Dotted overrides (``{"loss.k": 3e-5, "row.contrastive_form": "likelihood"}``) applied to a
typed config: the one way any setting is changed after a YAML is read.

Grid axes, search samples, ``--confirm-seeds``, ``ablate resume`` and the command line's
``key=value`` arguments all go through :func:`apply_overrides`, so a key means the same thing
everywhere, is checked against the config models before anything runs (an unknown key names
the closest valid one), and its value is typed and validated by those models.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from ablate.config import ROW_TYPES, ConfigError, did_you_mean, format_validation_error

Model = TypeVar("Model", bound=BaseModel)


def parse_assignments(args: list[str]) -> dict[str, Any]:
    """``["train.steps=50", "model.sr3.mults=[1,2]"]`` -> ``{"train.steps": 50, ...}``; each
    value is read as YAML (numbers, booleans, lists), then typed by the config models."""
    out: dict[str, Any] = {}
    for arg in args:
        key, sep, text = arg.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{arg}': write it as key=value, e.g. train.steps=50")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"override '{arg}': '{text}' is not a valid value") from None
    return out


def _model_class(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (``SearchConfig | None`` -> ``SearchConfig``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_class(arg)
            if found is not None:
                return found
    return None


def _field_names(node: BaseModel | type[BaseModel]) -> list[str]:
    """Keys valid below ``node``. Any row type's switch is a valid key below a row: setting
    ``row.method`` and ``row.irm`` together is fine, and ``irm`` on an ``sr3`` row is then
    rejected by validation as a switch that method does not have."""
    cls = node if isinstance(node, type) else type(node)
    if issubclass(cls, ROW_TYPES):
        return sorted({name for row in ROW_TYPES for name in row.model_fields})
    return list(cls.model_fields)


def _unknown(dotted: str, key: str, valid: list[str], source: str) -> ConfigError:
    return ConfigError(f"{source}: unknown key '{dotted}': {did_you_mean(dotted, key, valid)}")


def check_key(config: BaseModel, dotted: str, source: str) -> None:
    """Raise :class:`ConfigError` unless ``dotted`` addresses a setting of ``config``."""
    keys = dotted.split(".")
    node: Any = config
    for depth, key in enumerate(keys):
        path = ".".join(keys[: depth + 1])
        if isinstance(node, (BaseModel, type)):
            valid = _field_names(node)
            if key not in valid:
                raise _unknown(path, key, valid, source)
            field = (node if isinstance(node, type) else type(node)).model_fields.get(key)
            if field is None:  # another row type's switch: validation decides
                return
            value = None if isinstance(node, type) else getattr(node, key)
            node = value if value is not None else _model_class(field.annotation)
        elif isinstance(node, dict):
            # A mapping of named models (rows) must name an existing entry to go deeper;
            # a free mapping (grid axes, simulator knobs) takes any key.
            if key in node:
                node = node[key]
            elif depth < len(keys) - 1 and any(isinstance(v, BaseModel) for v in node.values()):
                raise _unknown(path, key, sorted(node), source)
            else:
                return
        else:
            parent = ".".join(keys[:depth])
            raise ConfigError(f"{source}: unknown key '{dotted}': '{parent}' is a value")


def apply_overrides(
    cls: type[Model],
    base: Model | Mapping[str, Any],
    overrides: Mapping[str, Any],
    source: str,
) -> Model:
    """``base`` with each dotted key of ``overrides`` set, validated as ``cls``.

    Args:
        cls: the config model the result must be (``ExperimentConfig``, ``TrialConfig``).
        base: a validated config or its raw dict.
        overrides: dotted key -> value; values are typed by ``cls``'s fields.
        source: where the overrides come from, for error messages ("command line", ...).

    Raises:
        ConfigError: one line naming an unknown key (and the closest valid one) or a value
            the config models reject.
    """
    base_model = base if isinstance(base, cls) else _validate(cls, dict(base), source)
    raw = base_model.model_dump(mode="json")
    for dotted, value in overrides.items():
        check_key(base_model, dotted, source)
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[last] = value
    return _validate(cls, raw, source)


def _validate(cls: type[Model], raw: dict[str, Any], source: str) -> Model:
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, cls)) from None
