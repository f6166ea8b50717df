"""Request and response bodies of ``/api/auth/*``, ``/api/users/*`` and ``/api/keys/*``."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from reelhouse.api.accounts.principal import Role
from reelhouse.common.contracts.base import ObjectIdStr
from reelhouse.common.contracts.types import NUL_FREE_PATTERN


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64, pattern=NUL_FREE_PATTERN)
    password: str = Field(min_length=1, max_length=256)


class RefreshBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh_token: str = Field(min_length=1, max_length=256)


class SessionBody(BaseModel):
    """The cookie endpoints' body: an empty JSON object. Requiring it makes the JSON content
    type (the CSRF defence beside ``SameSite=Strict``) part of the documented contract."""

    model_config = ConfigDict(extra="forbid")


class TokenPair(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 (the OAuth token type, not a secret)
    expires_in: int = Field(description="Seconds the access token stays valid.")
    refresh_token: str
    refresh_expires_in: int
    user: dict[str, Any]
    success: bool = True


class SessionTokens(BaseModel):
    """A cookie-mode login or refresh: the refresh token went into the ``HttpOnly`` cookie."""

    access_token: str
    token_type: str = "bearer"  # noqa: S105 (the OAuth token type, not a secret)
    expires_in: int = Field(description="Seconds the access token stays valid.")
    refresh_expires_in: int = Field(description="Seconds the refresh cookie stays valid.")
    user: dict[str, Any]
    success: bool = True


class Me(BaseModel):
    id: str
    name: str
    role: str
    tenant: str
    kind: str = Field(description="`user`, `key` or `bootstrap`.")
    success: bool = True


Username = Annotated[str, Field(pattern=r"^[A-Za-z0-9._@-]{1,64}$")]


Password = Annotated[str, Field(min_length=8, max_length=256)]


Tenant = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Username
    password: Password
    role: Role = "viewer"
    tenant: Tenant | None = Field(
        None, description="Another tenant (bootstrap admin only); default: the caller's."
    )


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: ObjectIdStr
    password: Password | None = None
    role: Role | None = None


class UserOut(BaseModel):
    id: str
    username: str
    role: Role
    tenant: str
    created: str
    modified: str
    success: bool = True


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1, max_length=100, pattern=NUL_FREE_PATTERN, description="What the key is for."
    )
    role: Role = "viewer"


class KeyOut(BaseModel):
    id: str
    name: str
    role: Role
    prefix: str = Field(description="The key's first characters, to tell keys apart.")
    created: str
    success: bool = True


class NewKey(KeyOut):
    key: str = Field(description="The API key. Shown only now: store it.")
