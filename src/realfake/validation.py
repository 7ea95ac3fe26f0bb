"""Pydantic building blocks: strict constrained types, validators with our own messages, and one-line errors.

A ValidationError becomes one line naming the dotted key, what is wrong and, for a choice, the allowed values.
"""

import typing
from typing import Annotated, Any

import pydantic
from pydantic import BaseModel, Field, Strict, ValidationError

from realfake.errors import ParamsError

MAX_INT = 10**9  # no count of this pipeline (images, epochs, steps) comes near it; larger is a typo


def check(test: typing.Callable[[Any], bool], message: str, kind: type = pydantic.AfterValidator) -> Any:
    """A validator (after, before or instead of pydantic's own) raising `message` where `test` fails."""

    def test_value(value: Any) -> Any:
        if not test(value):
            raise ValueError(message.format(value=value))
        return value

    return kind(test_value)


Int = Annotated[int, Strict(), Field(le=MAX_INT)]
Positive = Annotated[int, Strict(), Field(gt=0, le=MAX_INT)]
Pixels = Annotated[int, Strict(), Field(ge=0, le=MAX_INT)]  # a whole-pixel distance, 0 = none
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Fraction = Annotated[Float, check(lambda v: 0 <= v < 1, "must be in [0, 1), got {value!r}")]
Share = Annotated[Float, check(lambda v: 0 < v < 1, "must be in (0, 1), got {value!r}")]
Str = Annotated[str, Strict()]
Bool = Annotated[bool, Strict()]
Distinct = check(lambda v: len(set(v)) == len(v), "lists an entry twice: {value}")
Widths = Annotated[tuple[Positive, ...], Field(min_length=1)]


def _dotted(key: str, loc: tuple) -> str:
    return key + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


def _message(error: dict) -> str:
    kind, ctx, value = error["type"], error.get("ctx", {}), error.get("input")
    if kind == "value_error":
        return str(ctx["error"])
    if kind in ("literal_error", "union_tag_invalid"):
        allowed = ctx.get("expected", ctx.get("expected_tags", "")).replace("'", "").replace(" or ", ", ")
        return f"{ctx.get('tag', value)!r} is not allowed; use one of {allowed}"
    if kind in ("too_short", "too_long"):
        bound, count = ("at least", ctx["min_length"]) if kind == "too_short" else ("at most", ctx["max_length"])
        return f"list {bound} {count} {'entry' if count == 1 else 'entries'}, got {list(value)}"
    bound = next((b for b in ("gt", "ge", "le") if b in ctx), None)
    if bound:
        return f"must be {dict(gt='greater than', ge='>=', le='at most')[bound]} {ctx[bound]:g}, got {value!r}"
    text = "must be a finite number" if kind == "finite_number" else error["msg"][0].lower() + error["msg"][1:]
    return f"{text}, got {value!r}"


def one_line(exc: ValidationError, key: str, cls: type[BaseModel] | None, tagged: bool = False) -> str:
    errors = [dict(e, loc=e["loc"][tagged:]) for e in exc.errors(include_url=False)]  # the union's tag leads
    first, where = errors[0], _dotted(key, errors[0]["loc"][:-1])
    if first["type"] in ("missing", "extra_forbidden"):  # name every such key of the mapping at once
        names = [str(e["loc"][-1]) for e in errors if e["type"] == first["type"] and e["loc"][:-1] == first["loc"][:-1]]
        if first["type"] == "missing":
            return f"{where}: missing key(s) {', '.join(f'{where}.{n}' for n in names)}"
        allowed = sorted(cls.model_fields) if cls and len(first["loc"]) == 1 else []
        return f"{where}: unknown key(s) {', '.join(names)}; allowed keys: {', '.join(allowed)}"
    if first["type"] == "value_error" and not first["loc"]:  # a check across fields names its field
        return f"{key}.{first['ctx']['error']}"
    return f"{_dotted(key, first['loc'])}: {_message(first)}"


def validated(validator: typing.Callable[[dict], Any], raw: Any, key: str, cls: type[BaseModel] | None,
              tagged: bool = False) -> Any:  # fmt: skip
    """`validator(raw)`, or a ParamsError of one line naming the dotted key under `key`."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{key}: expected a mapping of settings, got {raw!r}")
    try:
        return validator(raw)
    except ValidationError as exc:
        raise ParamsError(one_line(exc, key, cls, tagged)) from None
