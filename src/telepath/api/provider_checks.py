"""Pre-flight validation of provider credentials when a trunk is created or its keys change.

How each answer is read (``reference/providers.md`` §2.10 and §3.10):

OpenAI ``GET {TELEPATH_OPENAI_API_BASE}/models/{model}`` with ``Authorization: Bearer``:
  200 valid. 401 invalid key -> 401 ``invalid_provider_credentials``. 403 is a *restricted* key
  without Models:Read, which may still work for Realtime: accepted (inconclusive, not wrong).
  404 the model is not available to this key -> 400 ``model_not_available``. 429 means the key
  authenticated (rate limit or quota): accepted. 5xx or unreachable -> 502 ``provider_unavailable``.

ElevenLabs ``GET {TELEPATH_ELEVENLABS_API_BASE}/v1/convai/agents/{agent_id}`` with ``xi-api-key``:
  200 valid. 401 ``invalid_api_key`` -> 401 ``invalid_provider_credentials``. 401
  ``missing_permissions`` is a scoped key without ``convai_read``: we then ask for a signed URL
  (``/v1/convai/conversation/get-signed-url``), the exact capability a call needs; 200 there is
  valid. 404/422 -> 400 ``invalid_elevenlabs_agent_id``. 5xx or unreachable -> 502.
  A trunk with a system prompt sends it as the conversation's prompt override, which ElevenLabs
  refuses (close 1008, ``override_error``: every call fails at set-up) unless the agent enables
  it in its Security settings: when the agent's 200 shows
  ``platform_settings.overrides.conversation_config_override.agent.prompt.prompt`` not ``true``
  -> 400 ``invalid_system_prompt``. When the overrides cannot be read (the signed-URL fallback,
  an answer without them), the trunk is not refused: that is not known to be wrong.

No key, URL query or provider response body is ever logged or echoed. The HTTP client is the
gateway's (aiohttp, ``bridges/http_client.py``: the same TLS trust and proxy settings).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import quote

import aiohttp
import yarl

from telepath.api.errors import ApiError
from telepath.bridges.http_client import new_session, read_body

logger = logging.getLogger(__name__)

# Of a provider's answer: an error's detail, or an ElevenLabs agent's settings (its prompt and
# tools included, so allow for long ones). One longer is read as no body: its overrides unknown.
MAX_ANSWER_BYTES = 1024 * 1024


def _invalid(field: str) -> ApiError:
    return ApiError(
        401, "invalid_provider_credentials", f"The provided {field} could not be validated"
    )


def _unavailable(provider: str) -> ApiError:
    return ApiError(
        502,
        "provider_unavailable",
        f"{provider} could not be reached to validate the credentials; no trunk was changed",
    )


class ProviderValidator:
    """Checks provider keys against the configured API base URLs."""

    def __init__(
        self, *, openai_api_base: str, elevenlabs_api_base: str, timeout_s: float, enabled: bool
    ) -> None:
        self.openai_api_base = openai_api_base.rstrip("/")
        self.elevenlabs_api_base = elevenlabs_api_base.rstrip("/")
        self.enabled = enabled
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None  # made on the first check

    async def aclose(self) -> None:
        """Release the HTTP connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _get(
        self,
        provider: str,
        url: str,
        headers: dict[str, str],
        params: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """Status and body (empty when longer than ``MAX_ANSWER_BYTES``: nothing of it is then
        read); unreachable, a timeout or a bad URL -> 502."""
        if self._session is None:
            self._session = new_session(limit=16)
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._session.get(
                    yarl.URL(url, encoded=True),  # already quoted: not again
                    headers=headers,
                    params=params,
                    allow_redirects=False,
                ) as resp:
                    return resp.status, await read_body(resp, MAX_ANSWER_BYTES) or b""
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            logger.warning(
                "provider check failed: %s unreachable (%s)", provider, type(exc).__name__
            )
            raise _unavailable(provider) from None

    async def check_openai(self, api_key: str, model: str) -> None:
        """Raise the documented ApiError unless ``api_key`` can be used for ``model``."""
        if not self.enabled:
            return
        url = f"{self.openai_api_base}/models/{quote(model, safe='')}"
        status, _ = await self._get("OpenAI", url, {"Authorization": f"Bearer {api_key}"})
        if status in (200, 403, 429):
            return
        if status == 401:
            raise _invalid("openai_api_key")
        if status == 404:
            raise ApiError(
                400,
                "model_not_available",
                f"Model '{model}' is not available to the provided openai_api_key",
            )
        logger.warning("provider check: OpenAI answered HTTP %d", status)
        raise _unavailable("OpenAI")

    async def check_elevenlabs(
        self, api_key: str, agent_id: str, *, system_prompt: bool = False
    ) -> None:
        """Raise the documented ApiError unless ``api_key`` can start ``agent_id`` conversations.

        Args:
            api_key: the trunk's ElevenLabs key.
            agent_id: the trunk's agent.
            system_prompt: the trunk has a system prompt, sent as the prompt override: the
                agent must not show that override disabled.
        """
        if not self.enabled:
            return
        headers = {"xi-api-key": api_key}
        url = f"{self.elevenlabs_api_base}/v1/convai/agents/{quote(agent_id, safe='')}"
        status, body = await self._get("ElevenLabs", url, headers)
        if status == 200 and system_prompt and _prompt_override(body) is False:
            raise ApiError(
                400,
                "invalid_system_prompt",
                f"Agent '{agent_id}' does not allow its system prompt to be overridden, so every "
                'call would be refused: enable "System prompt" under Overrides in the agent\'s '
                "Security settings on ElevenLabs, or remove system_prompt",
            )
        if status == 401 and _detail_status(body) == "missing_permissions":
            signed = f"{self.elevenlabs_api_base}/v1/convai/conversation/get-signed-url"
            status, _ = await self._get("ElevenLabs", signed, headers, {"agent_id": agent_id})
        if status == 200:
            return
        if status in (401, 403):
            raise _invalid("elevenlabs_api_key")
        if status in (400, 404, 422):
            raise ApiError(
                400,
                "invalid_elevenlabs_agent_id",
                f"Agent '{agent_id}' was not found for the provided elevenlabs_api_key",
            )
        logger.warning("provider check: ElevenLabs answered HTTP %d", status)
        raise _unavailable("ElevenLabs")


def _json(raw: bytes) -> Any:
    """The parsed answer, or ``None`` if it is not JSON (or nested too deep to parse)."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _prompt_override(raw: bytes) -> bool | None:
    """Whether an agent's answer enables the prompt override
    (``platform_settings.overrides.conversation_config_override.agent.prompt.prompt``);
    ``None`` when it has no ``overrides`` object to read. Within one, a field left out is not
    enabled: each must be turned on (providers.md §3.3)."""
    node = _json(raw)
    for key in ("platform_settings", "overrides"):
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return None
    for key in ("conversation_config_override", "agent", "prompt", "prompt"):
        node = node.get(key) if isinstance(node, dict) else None
    return node is True


def _detail_status(raw: bytes) -> str | None:
    body = _json(raw)
    detail = body.get("detail") if isinstance(body, dict) else None
    status = detail.get("status") if isinstance(detail, dict) else None
    return status if isinstance(status, str) else None
