"""No request-body string the API stores or queries admits NUL, in its schema or its validator.

PostgreSQL (under FerretDB) refuses ``\\u0000`` in any text, stored or compared in a query: a
string with NUL that reaches the database is an internal error (500), not a 400. So every string
of a request body must say so in its type: a pattern that excludes NUL
(``types.NUL_FREE_PATTERN`` or stricter), an enum, or a format. This walks the OpenAPI document
and names any string that does not, but for :data:`NOT_STORED` (hashed, sealed or parsed first,
never sent to the database as written); and it checks the free-form object type itself.
"""

from __future__ import annotations

import re
import re._parser as sre  # the pattern's atoms, to see whether one matches NUL
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from reelhouse.common.contracts.types import NUL_FREE_PATTERN, JsonObject

NOT_STORED = {
    # Hashed before anything is stored or compared.
    "POST /api/auth/login body.password",
    "POST /api/auth/session/login body.password",
    "POST /api/users/create body.password",
    "POST /api/users/update body.password",
    "POST /api/auth/refresh body.refresh_token",
    "POST /api/auth/logout body.refresh_token",
}
"""Request-body strings that never reach the database as written."""


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict[str, Any]:
    from support.services import settings_from_env

    from reelhouse.api.app import create_app
    from reelhouse.api.settings import ApiSettings

    tmp = tmp_path_factory.mktemp("openapi")
    env = {
        "REELHOUSE_STORAGE_ROOT": str(tmp / "recordings"),
        "REELHOUSE_ARCHIVE_ROOT": str(tmp / "archive"),
        "REELHOUSE_BOOTSTRAP_TOKEN_FILE": str(tmp / "bootstrap-token"),
    }
    app = create_app(settings_from_env(ApiSettings, env, bootstrap_token="t" * 40))
    return app.openapi()


def _class_admits_nul(items: list[tuple[Any, Any]]) -> bool:
    negate = bool(items) and items[0][0] is sre.NEGATE
    hit = False
    for op, arg in items[1:] if negate else items:
        if op is sre.LITERAL:
            hit = hit or arg == 0
        elif op is sre.RANGE:
            hit = hit or arg[0] == 0
        elif op is sre.CATEGORY:
            hit = hit or arg in (sre.CATEGORY_NOT_SPACE, sre.CATEGORY_NOT_DIGIT,
                                 sre.CATEGORY_NOT_WORD, sre.CATEGORY_NOT_LINEBREAK)  # fmt: skip
        else:
            return True  # a class this walk does not know: counted as admitting
    return hit != negate


def _pattern_admits_nul(parsed: Any) -> bool:
    """Whether some atom of a parsed pattern matches NUL (a pattern whose atoms all refuse it
    matches no string with NUL)."""
    for op, arg in parsed:
        if op is sre.ANY or (op is sre.LITERAL and arg == 0):
            return True
        if op is sre.NOT_LITERAL and arg != 0:
            return True
        if op is sre.IN and _class_admits_nul(arg):
            return True
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            if _pattern_admits_nul(arg[2]):
                return True
        elif op is sre.SUBPATTERN:
            if _pattern_admits_nul(arg[-1]):
                return True
        elif op is sre.BRANCH:
            if any(_pattern_admits_nul(branch) for branch in arg[1]):
                return True
        elif op in (sre.ASSERT, sre.ASSERT_NOT):
            continue
    return False


def _admits_nul(schema: dict[str, Any]) -> bool:
    if any(k in schema for k in ("enum", "const", "format")):
        return False
    pattern = schema.get("pattern")
    return pattern is None or _pattern_admits_nul(sre.parse(pattern))


def _strings(spec: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every string schema of every request body, by ``METHOD path body.field.sub``."""
    components = spec["components"]["schemas"]
    found: dict[str, list[dict[str, Any]]] = {}

    def walk(schema: Any, path: str, seen: frozenset[str]) -> None:
        if not isinstance(schema, dict):
            return
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            if name in seen:
                return
            seen, schema = seen | {name}, components[name]
        if schema.get("type") == "string":
            found.setdefault(path, []).append(schema)
        # An object's own anyOf/oneOf/allOf only narrow its properties (cross-field rules,
        # ``CrossFieldSchema``): the properties themselves say what each field admits.
        for key in () if "properties" in schema else ("anyOf", "oneOf", "allOf"):
            for sub in schema.get(key, []):
                walk(sub, path, seen)
        for name, sub in (schema.get("properties") or {}).items():
            walk(sub, f"{path}.{name}", seen)
        if isinstance(schema.get("additionalProperties"), dict):
            walk(schema["additionalProperties"], f"{path}.*", seen)
        if "propertyNames" in schema:
            walk({"type": "string", **schema["propertyNames"]}, f"{path}.<key>", seen)
        if isinstance(schema.get("items"), dict):
            walk(schema["items"], f"{path}[]", seen)

    for route, operations in spec["paths"].items():
        for method, operation in operations.items():
            content = (operation.get("requestBody") or {}).get("content", {})
            for media in content.values():
                walk(media.get("schema", {}), f"{method.upper()} {route} body", frozenset())
    return found


def test_no_request_body_string_admits_nul(spec):
    strings = _strings(spec)
    assert len(strings) > 100, "the walk found too few strings: is the spec's shape new?"
    admitting = sorted(
        path
        for path, schemas in strings.items()
        if path not in NOT_STORED and any(_admits_nul(schema) for schema in schemas)
    )
    assert not admitting, "strings that admit NUL:\n" + "\n".join(admitting)


def test_nul_free_pattern_is_what_it_says():
    assert re.fullmatch(NUL_FREE_PATTERN, "any text\n\t\x01 ok")
    assert not re.fullmatch(NUL_FREE_PATTERN, "a\x00b")


@pytest.mark.parametrize(
    ("pattern", "admits"),
    [
        (NUL_FREE_PATTERN, False),
        (r"^[^\x00-\x1f\x7f]*$", False),
        (r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$", False),
        (r"^(?:srt|rtmp)://[A-Za-z0-9._~-]+(?::[0-9]{1,5})?$", False),
        (r"^$|^[0-9]+$", False),
        (r"^[^\s/?#]*$", True),
        (r"^.*$", True),
        (r"^\S+$", True),
        (r"^a|[^b]$", True),
    ],
)
def test_the_walk_reads_patterns(pattern, admits):
    assert _admits_nul({"type": "string", "pattern": pattern}) is admits


class _Holder(BaseModel):
    settings: JsonObject


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"a": "x\x00"}, "at a"),
        ({"a": {"b": ["ok", "\x00"]}}, "at a.b[1]"),
        ({"a": [{"b\x00": 1}]}, "key"),
        ({"\x00": 1}, "key"),
    ],
)
def test_json_object_refuses_nul_anywhere(value, where):
    with pytest.raises(ValidationError) as caught:
        _Holder(settings=value)
    (error,) = caught.value.errors()
    assert error["loc"] == ("settings",)
    assert "NUL" in error["msg"]
    assert where in error["msg"]


def test_json_object_schema_says_strings_have_no_nul():
    schema = _Holder.model_json_schema()["properties"]["settings"]
    assert schema["propertyNames"] == {"pattern": r"^[^$.\x00][^.\x00]*$"}
    scalars = schema["additionalProperties"]["anyOf"]
    assert {"type": "string", "pattern": NUL_FREE_PATTERN} in scalars
