"""ORM models: accounts, API keys and trunks.

Secrets columns hold only what is safe at rest: SIP digest HA1 values (never the password),
AES-256-GCM envelopes for provider keys and custom headers (see ``telepath.secrets.keyring``),
and SHA-256 hashes of API keys.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from telepath.db.base import Base, UTCDateTime


class Account(Base):
    """A tenant: owns API keys and trunks and sees nothing else."""

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiKey(Base):
    """An API key; only its SHA-256 is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Trunk(Base):
    """A SIP identity linked to an AI provider configuration."""

    __tablename__ = "trunks"
    __table_args__ = (Index("ix_trunks_account_created", "account_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    ai_provider: Mapped[str] = mapped_column(String(16))
    # The SIP address user part: unique across the installation, not just the account.
    sip_username: Mapped[str] = mapped_column(String(30))
    sip_realm: Mapped[str] = mapped_column(String(255))
    ha1_md5: Mapped[str] = mapped_column(String(32))
    ha1_sha256: Mapped[str] = mapped_column(String(64))
    password_rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    openai_api_key_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    openai_api_key_hint: Mapped[str | None] = mapped_column(String(32), nullable=True)
    openai_model: Mapped[str | None] = mapped_column(String(100), nullable=True)
    openai_voice: Mapped[str | None] = mapped_column(String(50), nullable=True)
    elevenlabs_api_key_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    elevenlabs_api_key_hint: Mapped[str | None] = mapped_column(String(32), nullable=True)
    elevenlabs_agent_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    custom_endpoint: Mapped[str | None] = mapped_column(Text, nullable=True)
    custom_protocol: Mapped[str | None] = mapped_column(String(16), nullable=True)
    custom_headers_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    system_prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


# SIP usernames are unique regardless of case, so "Agent-1" cannot shadow "agent-1".
Index("uq_trunks_sip_username_ci", func.lower(Trunk.sip_username), unique=True)

# Encrypted trunk columns: logical name -> attribute holding the AES-GCM envelope.
TRUNK_SECRET_COLUMNS = {
    "openai_api_key": "openai_api_key_enc",
    "elevenlabs_api_key": "elevenlabs_api_key_enc",
    "custom_headers": "custom_headers_enc",
}


def trunk_secret_context(trunk_id: str, column: str) -> str:
    """Associated data binding an encrypted value to its trunk and column."""
    return f"trunk:{trunk_id}:{column}"
