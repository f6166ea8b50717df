"""Bodies every job module's API shares: ``{"id": ...}`` and the ``getAll``/``getCount`` query.

A module makes its list body by subclassing :class:`ListQuery` with the fields a filter may name
and the fields a sort may name; the checks (known fields only, no ``$`` operators) live here once.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    WithJsonSchema,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from reelhouse.common.contracts.base import ObjectIdStr
from reelhouse.common.contracts.types import NUL_FREE_PATTERN, SAFE_INT, whole_int


class IdBody(BaseModel):
    """``{"id": "..."}``: getById, start, stop, remove."""

    model_config = ConfigDict(extra="forbid")

    id: ObjectIdStr


def _scalar(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():  # JSON schema's integer: 3.0 is 3
        value = int(value)
    if not isinstance(value, str | int | bool):
        raise ValueError(
            "must be a string, a whole number or a boolean (operators are not accepted)"
        )
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise ValueError("whole numbers must fit in 64 bits")
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("must not contain the NUL character")
    return value


FilterValue = Annotated[
    Any,
    AfterValidator(_scalar),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": NUL_FREE_PATTERN},
                {"type": "boolean"},
                {"type": "integer", "minimum": -SAFE_INT, "maximum": SAFE_INT},
            ]
        }
    ),
]
"""What a filter compares a field with (equality only)."""


def name_fields(
    schema: dict[str, Any], *, filter_fields: frozenset[str], sort_fields: frozenset[str]
) -> None:
    """Show in a list body's JSON schema which fields ``filter`` and ``sort`` may name."""
    properties = schema.get("properties", {})
    for name, fields in (("filter", filter_fields), ("sort", sort_fields)):
        if name in properties:
            properties[name]["propertyNames"] = {"enum": sorted(fields)}


class ListQuery(BaseModel):
    """Body of ``getAll`` / ``getCount``: limit, skip, sort, filter (equality on known fields)."""

    model_config = ConfigDict(extra="forbid")

    filter_fields: ClassVar[frozenset[str]] = frozenset({"_id", "id"})
    """Fields a filter may name (a subclass sets its module's)."""
    sort_fields: ClassVar[frozenset[str]] = frozenset({"created", "modified"})
    """Fields a sort may name (a subclass sets its module's)."""

    limit: whole_int(ge=0, le=1000) = 0
    skip: whole_int(ge=0, le=2**31 - 1) = 0  # past int64 MongoDB fails (500)
    sort: dict[str, Literal[1, -1]] = Field(default_factory=lambda: {"created": 1})
    filter: dict[str, FilterValue] = Field(default_factory=dict)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        name_fields(schema, filter_fields=cls.filter_fields, sort_fields=cls.sort_fields)
        return schema

    @field_validator("filter")
    @classmethod
    def _known_filter_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key.startswith("$") or key not in cls.filter_fields:
                raise ValueError(
                    f"unknown field {key!r} (operators are not accepted); allowed: "
                    f"{', '.join(sorted(cls.filter_fields))}"
                )
        return value

    @field_validator("sort")
    @classmethod
    def _known_sort_fields(cls, value: dict[str, int]) -> dict[str, int]:
        for key in value:
            if key not in cls.sort_fields:
                raise ValueError(
                    f"unknown field {key!r}; allowed: {', '.join(sorted(cls.sort_fields))}"
                )
        return value
