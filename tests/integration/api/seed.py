"""Request bodies and responses taken verbatim from the seed spec (seed-create-trunk.txt)."""

from __future__ import annotations

from typing import Any

OPENAI_EXAMPLE: dict[str, Any] = {
    "name": "Production OpenAI Agent",
    "ai_provider": "openai",
    "sip_username": "agent-prod-01",
    "sip_password": "s3cur3P@ssw0rd!",
    "openai_api_key": "sk-openai-abc123...",
    "system_prompt": "You are a helpful customer service agent.",
}
OPENAI_REALTIME: dict[str, Any] = {
    "name": "OpenAI Realtime Agent",
    "ai_provider": "openai",
    "sip_username": "oai-agent-01",
    "sip_password": "s3cur3P@ssw0rd!",
    "openai_api_key": "sk-openai-abc123...",
    "system_prompt": "You are a helpful assistant.",
}
ELEVENLABS: dict[str, Any] = {
    "name": "ElevenLabs Sales Agent",
    "ai_provider": "elevenlabs",
    "sip_username": "el-sales-01",
    "sip_password": "s3cur3P@ssw0rd!",
    "elevenlabs_api_key": "el_api_abc123...",
    "elevenlabs_agent_id": "agent_xyz789...",
}
CUSTOM: dict[str, Any] = {
    "name": "Custom WebSocket Agent",
    "ai_provider": "custom",
    "sip_username": "custom-agent-01",
    "sip_password": "s3cur3P@ssw0rd!",
    "custom_endpoint": "wss://your-agent.example.com/voice",
}
CREATE_RESPONSE_FIELDS = {
    "id",
    "name",
    "status",
    "ai_provider",
    "sip_username",
    "sip_endpoint",
    "created_at",
}
ISO_UTC = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"
