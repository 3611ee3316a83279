"""What the auth API accepts and returns; hashes never leave the server."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from lods.auth.models import ApiToken, Role, User
from lods.db import utcnow


class MeOut(BaseModel):
    """The caller, as the server sees them."""

    username: str
    full_name: str
    roles: list[Role]
    via: str = Field(description="How the caller proved who they are: session or token")
    language: str | None


class UserOut(BaseModel):
    """A user account, without its password hash."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    full_name: str
    roles: list[Role]
    is_active: bool
    locked: bool
    locked_until: datetime | None
    failed_logins: int
    language: str | None
    created_at: datetime
    last_login_at: datetime | None

    @classmethod
    def of(cls, user: User) -> UserOut:
        """Return the public view of `user`."""
        now = utcnow()
        locked = user.locked_until is not None and user.locked_until > now
        return cls(
            id=user.id,
            username=user.username,
            full_name=user.full_name,
            roles=sorted(user.role_set),
            is_active=user.is_active,
            locked=locked,
            locked_until=user.locked_until if locked else None,
            failed_logins=user.failed_logins or 0,
            language=user.language,
            created_at=user.created_at,
            last_login_at=user.last_login_at,
        )


class UserCreate(BaseModel):
    """A new account; without a password, a strong one is generated and returned once."""

    username: str = Field(min_length=1, max_length=64)
    full_name: str = Field("", max_length=200)
    roles: list[Role] = Field(min_length=1)
    password: str | None = Field(None, max_length=1024)


class UserCreated(UserOut):
    """The new account, with the generated password when the request gave none."""

    generated_password: str | None = None


class TokenCreate(BaseModel):
    """A request for a new API token."""

    label: str = Field("", max_length=100)
    expires_days: int | None = Field(None, ge=1, le=3650)


class TokenOut(BaseModel):
    """An API token's record; the token itself is never shown again."""

    id: int
    username: str
    label: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiToken) -> TokenOut:
        """Return the public view of a token row."""
        return cls(
            id=row.id,
            username=row.user.username,
            label=row.label,
            created_at=row.created_at,
            expires_at=row.expires_at,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
        )


class TokenCreated(TokenOut):
    """A new token; `token` is shown this once and stored only as a hash."""

    token: str
