"""The options of an ``xbd:`` dataset spec: parsing ``xbd:<path>[?option=value&...]`` into :class:`XBDOptions`.

The options themselves are described in the :mod:`rsdistill.data.xbd` docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from rsdistill.core.errors import RSDistillError

OPTION_CHOICES = {"mode": ("damage", "disaster"), "pair": ("post", "side", "stack"),
                  "split": ("tile", "disaster", "folder")}
STACK_REFUSAL = (
    "xBD pair=stack gives 6-channel patches (pre RGB + post RGB); the RGB stages (images(), prototypes, "
    "captions, generator, evaluate) take 3 channels. Use pair=side (pre and post side by side in one RGB "
    "image) or pair=post, or read the 6-channel arrays with XBDDataset.stacked(split, resolution)."
)


@dataclass(frozen=True)
class XBDOptions:
    """The options of an ``xbd:`` spec (see the :mod:`rsdistill.data.xbd` docstring)."""

    mode: str = "damage"
    patch: int | None = None
    margin: float = 0.25
    min_window: int = 32
    pair: str = "post"
    split: str = "tile"
    test: float | None = None

    @property
    def patch_size(self) -> int | None:
        """Output patch side: `patch`, else 64 for buildings and the tile's own size (None) for tiles."""
        if self.patch is not None:
            return self.patch
        return 64 if self.mode == "damage" else None


def _option(name: str, text: str, spec: str, kind: type, low: float, high: float) -> Any:
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        kind_name = "an integer" if kind is int else "a number"
        raise RSDistillError(
            f"xbd option {name}={text!r} in {spec!r} must be {kind_name} from {low} to {high}."
        )
    return value


def parse_spec(spec: str) -> tuple[Path, XBDOptions]:
    """The folder and options of ``xbd:<path>[?options]``.

    Raises:
        RSDistillError: On an unknown, repeated or out-of-range option.
    """
    target = spec.split(":", 1)[1] if spec.startswith("xbd:") else spec
    location, _, query = target.partition("?")
    if not location:
        raise RSDistillError(f"Dataset spec {spec!r} names no folder; use xbd:<path>[?option=value&...].")
    try:
        pairs = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise RSDistillError(
            f"Cannot read the options of {spec!r}: write them as ?name=value&name=value."
        ) from None
    known = ("mode", "patch", "margin", "min_window", "pair", "split", "test")
    unknown = sorted(set(pairs) - set(known))
    if unknown:
        raise RSDistillError(
            f"Unknown xbd option(s) {', '.join(unknown)} in {spec!r}; known: {', '.join(known)}."
        )
    repeated = sorted(name for name, values in pairs.items() if len(values) > 1)
    if repeated:
        raise RSDistillError(f"xbd option(s) {', '.join(repeated)} given more than once in {spec!r}.")
    values = {name: found[0] for name, found in pairs.items()}
    for name, choices in OPTION_CHOICES.items():
        if name in values and values[name] not in choices:
            raise RSDistillError(
                f"xbd option {name}={values[name]!r} in {spec!r}: use one of {', '.join(choices)}."
            )
    numbers = {"patch": (int, 4, 8192), "margin": (float, 0.0, 10.0), "min_window": (int, 1, 8192),
               "test": (float, 0.01, 0.99)}
    for name, (kind, low, high) in numbers.items():
        if name in values:
            values[name] = _option(name, values[name], spec, kind, low, high)
    options = XBDOptions(**values)
    return Path(location).expanduser(), options
