"""Pydantic models that document request and response bodies in the OpenAPI spec.

Responses are built from these models. Request bodies are validated by ``trunk_input`` (for the
seed's exact error codes); the request models here mirror those rules for the spec and clients.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Provider = Literal["openai", "elevenlabs", "custom"]
TrunkStatus = Literal["active", "inactive", "error"]
CustomProtocol = Literal["telepath", "twilio"]


class TrunkCreate(BaseModel):
    """Body of ``POST /v1/trunks`` (the seed's fields plus optional provider settings)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="Friendly name")
    ai_provider: Provider
    sip_username: str = Field(
        pattern=r"^[A-Za-z0-9-]{3,30}$",
        description="Unique SIP username: alphanumeric characters and hyphens, 3-30 characters",
    )
    sip_password: str = Field(min_length=8, max_length=128, description="SIP digest password")
    openai_api_key: str | None = Field(None, description="Required when ai_provider is openai")
    openai_model: str | None = Field(None, description="Realtime model (default gpt-realtime)")
    openai_voice: str | None = Field(None, description="Realtime voice (provider default)")
    elevenlabs_api_key: str | None = Field(
        None, description="Required when ai_provider is elevenlabs"
    )
    elevenlabs_agent_id: str | None = Field(
        None, description="Required when ai_provider is elevenlabs"
    )
    custom_endpoint: str | None = Field(
        None, description="wss:// URL of your agent; required when ai_provider is custom"
    )
    custom_protocol: CustomProtocol | None = Field(
        None, description="Wire protocol of a custom agent (default telepath)"
    )
    custom_headers: dict[str, str] | None = Field(
        None, description="Headers sent on the agent WebSocket handshake (stored encrypted)"
    )
    system_prompt: str | None = Field(None, max_length=32000)


class TrunkUpdate(BaseModel):
    """Body of ``PATCH /v1/trunks/{id}``: only the fields present change."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    status: Literal["active", "inactive"] | None = None
    openai_api_key: str | None = None
    openai_model: str | None = None
    openai_voice: str | None = None
    elevenlabs_api_key: str | None = None
    elevenlabs_agent_id: str | None = None
    custom_endpoint: str | None = None
    custom_protocol: CustomProtocol | None = None
    custom_headers: dict[str, str] | None = None
    system_prompt: str | None = Field(None, max_length=32000)


class TrunkCreated(BaseModel):
    """The seed's create response, field for field."""

    id: str = Field(examples=["conn_01jdq3v7w5x8y9z0a1b2c3d4e5"])
    name: str
    status: TrunkStatus
    ai_provider: Provider
    sip_username: str
    sip_endpoint: str = Field(description="{sip_username}@{TELEPATH_SIP_DOMAIN}")
    created_at: str = Field(description="ISO 8601, UTC")


class Trunk(TrunkCreated):
    """A trunk as read back. Secrets appear only as masked hints."""

    updated_at: str
    system_prompt: str | None = None
    openai_api_key_hint: str | None = None
    openai_model: str | None = None
    openai_voice: str | None = None
    elevenlabs_api_key_hint: str | None = None
    elevenlabs_agent_id: str | None = None
    custom_endpoint: str | None = None
    custom_protocol: CustomProtocol | None = None
    custom_header_names: list[str] | None = Field(
        None, description="Names of the stored custom headers (values are never returned)"
    )
    password_rotated_at: str | None = None


class Pagination(BaseModel):
    """Offset pagination block of list responses."""

    limit: int
    offset: int
    total: int


class TrunkList(BaseModel):
    """``GET /v1/trunks`` response."""

    trunks: list[Trunk]
    pagination: Pagination


class PasswordRotated(BaseModel):
    """``POST /v1/trunks/{id}/rotate-password`` response: the only time the password is shown."""

    id: str
    sip_username: str
    sip_password: str
    rotated_at: str
