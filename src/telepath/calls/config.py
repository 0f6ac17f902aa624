"""Call-control settings, taken from :class:`telepath.config.Settings` once at start."""

from __future__ import annotations

from dataclasses import dataclass

from telepath.config import Settings
from telepath.sdp.negotiate import codec_preference


@dataclass(frozen=True, slots=True)
class CallControlConfig:
    """What call control needs to know about the installation."""

    realm: str = "sip.telepath.local"
    media_address: str = "127.0.0.1"  # advertised in SDP c=
    codecs: tuple[str, ...] = ("G722", "PCMU", "PCMA")
    srtp: str = "allow"  # "off" | "allow" | "require" (TELEPATH_SIP_SRTP)
    max_calls: int = 500
    max_cps: float = 0.0  # new call attempts per second (0: unlimited)
    overload_lag_s: float = 0.2
    max_loop_load: float = 0.0  # loop thread CPU share that limits new attempts (0: off)
    provider_timeout_s: float = 10.0
    agent_reconnect_s: float = 10.0
    # ws:// custom agents may be dialled (TELEPATH_ALLOW_INSECURE_AGENT_URLS), checked per call
    allow_insecure_agent_urls: bool = False
    rtp_inactivity_timeout_s: float = 30.0
    jitter_min_ms: int = 20
    jitter_max_ms: int = 60
    openai_realtime_url: str = "wss://api.openai.com/v1/realtime"
    openai_model: str = "gpt-realtime-2.1"
    elevenlabs_api_base: str = "https://api.elevenlabs.io"
    elevenlabs_ws_url: str = "wss://api.elevenlabs.io/v1/convai/conversation"
    hangup_drain_max_s: float = 10.0  # agent hang-up, transfer: let queued audio play this long
    bye_wait_s: float = 2.0  # a call we end waits this long for the answer to its BYE
    max_call_duration_s: float = 14400.0  # from the answer; then BYE, ``max_duration`` (0: off)
    trunk_recheck_s: float = 5.0  # live calls' trunks still active? (0: only same-process news)

    @classmethod
    def from_settings(cls, settings: Settings, media_address: str) -> CallControlConfig:
        """Build from ``TELEPATH_*`` settings.

        Raises:
            ValueError: ``TELEPATH_SIP_CODECS`` names a codec we lack, or none (``telepath
                serve`` builds this before it starts, ``cli/preflight.py``: every INVITE
                would otherwise fail on it).
        """
        names = [name.strip() for name in settings.sip_codecs.split(",") if name.strip()]
        return cls(
            realm=settings.sip_domain,
            media_address=media_address,
            codecs=tuple(codec_preference(names)),
            srtp=settings.sip_srtp,
            max_calls=settings.sip_max_calls,
            max_cps=settings.sip_max_cps,
            overload_lag_s=settings.sip_overload_lag_ms / 1000,
            max_loop_load=settings.sip_max_loop_load,
            provider_timeout_s=settings.provider_timeout_s,
            agent_reconnect_s=settings.agent_reconnect_s,
            allow_insecure_agent_urls=settings.allow_insecure_agent_urls,
            rtp_inactivity_timeout_s=settings.rtp_inactivity_timeout_s,
            jitter_min_ms=settings.rtp_jitter_min_ms,
            jitter_max_ms=settings.rtp_jitter_max_ms,
            max_call_duration_s=settings.call_max_duration_s,
            bye_wait_s=settings.sip_bye_wait_s,
            trunk_recheck_s=settings.trunk_recheck_s,
            openai_realtime_url=settings.openai_realtime_url,
            openai_model=settings.openai_model,
            elevenlabs_api_base=settings.elevenlabs_api_base,
            elevenlabs_ws_url=settings.elevenlabs_ws_url,
        )
