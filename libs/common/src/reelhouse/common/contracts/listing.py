"""Bodies every job module's API shares: ``{"id": ...}`` and the ``getAll``/``getCount`` query.

A module makes its list body by subclassing :class:`ListQuery` with the fields a filter may name
and the fields a sort may name; the checks (known fields only, no ``$`` operators) live here once.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, field_validator

from reelhouse.common.contracts.base import ObjectIdStr


class IdBody(BaseModel):
    """``{"id": "..."}``: getById, start, stop, remove."""

    model_config = ConfigDict(extra="forbid")

    id: ObjectIdStr


def _scalar(value: Any) -> Any:
    if not isinstance(value, str | int | bool):
        raise ValueError(
            "must be a string, a whole number or a boolean (operators are not accepted)"
        )
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise ValueError("whole numbers must fit in 64 bits")
    return value


FilterValue = Annotated[Any, AfterValidator(_scalar)]
"""What a filter compares a field with (equality only)."""


class ListQuery(BaseModel):
    """Body of ``getAll`` / ``getCount``: limit, skip, sort, filter (equality on known fields)."""

    model_config = ConfigDict(extra="forbid")

    filter_fields: ClassVar[frozenset[str]] = frozenset({"_id", "id"})
    """Fields a filter may name (a subclass sets its module's)."""
    sort_fields: ClassVar[frozenset[str]] = frozenset({"created", "modified"})
    """Fields a sort may name (a subclass sets its module's)."""

    limit: Annotated[StrictInt, Field(ge=0, le=1000)] = 0
    skip: Annotated[StrictInt, Field(ge=0, le=2**31 - 1)] = 0  # past int64 MongoDB fails (500)
    sort: dict[str, Literal[1, -1]] = Field(default_factory=lambda: {"created": 1})
    filter: dict[str, FilterValue] = Field(default_factory=dict)

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
