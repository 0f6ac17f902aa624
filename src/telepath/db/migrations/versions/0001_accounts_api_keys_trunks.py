"""Accounts, API keys and trunks.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-24 14:09:37.282081
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "accounts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("name", name=op.f("uq_accounts_name")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("hint", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_used_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_api_keys_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_table(
        "trunks",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("ai_provider", sa.String(length=16), nullable=False),
        sa.Column("sip_username", sa.String(length=30), nullable=False),
        sa.Column("sip_realm", sa.String(length=255), nullable=False),
        sa.Column("ha1_md5", sa.String(length=32), nullable=False),
        sa.Column("ha1_sha256", sa.String(length=64), nullable=False),
        sa.Column("password_rotated_at", sa.DateTime(), nullable=True),
        sa.Column("openai_api_key_enc", sa.Text(), nullable=True),
        sa.Column("openai_api_key_hint", sa.String(length=32), nullable=True),
        sa.Column("openai_model", sa.String(length=100), nullable=True),
        sa.Column("openai_voice", sa.String(length=50), nullable=True),
        sa.Column("elevenlabs_api_key_enc", sa.Text(), nullable=True),
        sa.Column("elevenlabs_api_key_hint", sa.String(length=32), nullable=True),
        sa.Column("elevenlabs_agent_id", sa.String(length=200), nullable=True),
        sa.Column("custom_endpoint", sa.Text(), nullable=True),
        sa.Column("custom_protocol", sa.String(length=16), nullable=True),
        sa.Column("custom_headers_enc", sa.Text(), nullable=True),
        sa.Column("system_prompt", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_trunks_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trunks")),
    )
    with op.batch_alter_table("trunks", schema=None) as batch_op:
        batch_op.create_index(
            "ix_trunks_account_created", ["account_id", "created_at"], unique=False
        )
        batch_op.create_index(
            "uq_trunks_sip_username_ci", [sa.text("lower(sip_username)")], unique=True
        )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index("ix_api_keys_account_id", ["account_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_api_keys_account_id")
    with op.batch_alter_table("trunks", schema=None) as batch_op:
        batch_op.drop_index("uq_trunks_sip_username_ci")
        batch_op.drop_index("ix_trunks_account_created")

    op.drop_table("trunks")
    op.drop_table("api_keys")
    op.drop_table("accounts")
