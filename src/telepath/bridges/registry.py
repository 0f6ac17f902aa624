"""Build the bridge for a trunk's ``ai_provider``.

Every provider's bridge is imported here, with the module: a bridge imported on its first call
instead ran the import (35-45 ms per provider, measured) on the event loop, stalling every call's
media and adding as much to that call's set-up (first call after start: 56-72 ms, then 8 ms).
"""

from __future__ import annotations

from collections.abc import Callable

from telepath.bridges.base import (
    AgentBridge,
    CustomConfig,
    ElevenLabsConfig,
    OpenAIConfig,
    ProviderConfig,
)
from telepath.bridges.custom.bridge import TelepathAgentBridge, TwilioStreamBridge
from telepath.bridges.elevenlabs.bridge import ElevenLabsBridge
from telepath.bridges.openai.bridge import OpenAIRealtimeBridge
from telepath.errors import ConfigurationError

__all__ = ["PROVIDERS", "create_bridge"]


def _openai(config: ProviderConfig, timeout_s: float) -> AgentBridge:
    assert isinstance(config, OpenAIConfig)
    return OpenAIRealtimeBridge(config, connect_timeout_s=timeout_s)


def _elevenlabs(config: ProviderConfig, timeout_s: float) -> AgentBridge:
    assert isinstance(config, ElevenLabsConfig)
    return ElevenLabsBridge(config, connect_timeout_s=timeout_s)


def _custom(config: ProviderConfig, timeout_s: float) -> AgentBridge:
    assert isinstance(config, CustomConfig)
    if config.protocol == "twilio":
        return TwilioStreamBridge(config, connect_timeout_s=timeout_s)
    return TelepathAgentBridge(config, connect_timeout_s=timeout_s)


PROVIDERS: dict[
    str, tuple[type[ProviderConfig], Callable[[ProviderConfig, float], AgentBridge]]
] = {
    "openai": (OpenAIConfig, _openai),
    "elevenlabs": (ElevenLabsConfig, _elevenlabs),
    "custom": (CustomConfig, _custom),
}


def create_bridge(
    provider: str, config: ProviderConfig, *, connect_timeout_s: float = 10.0
) -> AgentBridge:
    """A new, unstarted bridge for one call.

    Args:
        provider: the trunk's ``ai_provider`` (``openai``, ``elevenlabs`` or ``custom``).
        config: the matching config dataclass, built from the trunk's decrypted fields.
        connect_timeout_s: connect/setup bound (``TELEPATH_PROVIDER_TIMEOUT_S``).

    Raises:
        ConfigurationError: unknown provider, or a config of the wrong type.
    """
    entry = PROVIDERS.get(provider)
    if entry is None:
        raise ConfigurationError(f"unknown ai_provider {provider!r}")
    config_type, factory = entry
    if not isinstance(config, config_type):
        raise ConfigurationError(f"ai_provider {provider!r} needs a {config_type.__name__}")
    return factory(config, connect_timeout_s)
