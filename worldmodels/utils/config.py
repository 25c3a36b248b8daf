"""Turning Hydra/OmegaConf nodes into the dataclass configs of ``worldmodels.nn``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

T = TypeVar("T")


def dataclass_from_config(cls: type[T], node: DictConfig | Mapping[str, Any], ignore: Iterable[str] = ("name",)) -> T:
    """Build ``cls`` from the keys of ``node`` (minus ``ignore``); an unknown key is
    an error that lists the fields ``cls`` has."""
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    skip = set(ignore)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names - skip)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; its fields are {sorted(names)}.")
    return cls(**{k: v for k, v in values.items() if k not in skip})


def to_dict(node: DictConfig | Mapping[str, Any]) -> dict:
    """A config node (or mapping) as a plain dict, interpolations resolved."""
    return dict(OmegaConf.to_container(node, resolve=True)) if isinstance(node, DictConfig) else dict(node)
