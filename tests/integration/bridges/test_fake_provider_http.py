"""The credential-check fake answers exactly as its docstring promises."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from telepath.testing.fake_provider_http import PROMPT_OVERRIDE, FakeProviderHttp


@pytest.fixture
def fake() -> Iterator[FakeProviderHttp]:
    with FakeProviderHttp(elevenlabs_ws_url="ws://127.0.0.1:1/ws") as server:
        yield server


@pytest.mark.parametrize(
    ("key", "model", "status", "code"),
    [
        ("sk-valid-1", "gpt-realtime", 200, None),
        ("sk-valid-1", "missing-model", 404, "model_not_found"),
        ("sk-restricted-1", "gpt-realtime", 403, None),
        ("sk-ratelimited", "gpt-realtime", 429, "rate_limit_exceeded"),
        ("sk-outage", "gpt-realtime", 503, None),
        ("sk-wrong", "gpt-realtime", 401, "invalid_api_key"),
    ],
)
def test_openai_models(
    fake: FakeProviderHttp, key: str, model: str, status: int, code: str | None
) -> None:
    resp = httpx.get(
        f"{fake.openai_api_base}/models/{model}", headers={"Authorization": f"Bearer {key}"}
    )
    assert resp.status_code == status
    if status == 200:
        assert resp.json()["id"] == model
    else:
        assert resp.json()["error"]["code"] == code
    assert fake.requests[-1].path == f"/v1/models/{model}"


def test_openai_without_key(fake: FakeProviderHttp) -> None:
    resp = httpx.get(f"{fake.openai_api_base}/models/gpt-realtime")
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("key", "agent", "status", "detail_status"),
    [
        ("sk_valid_x", "agent_1", 200, None),
        ("sk-valid", "agent_missing", 404, "agent_not_found"),
        ("sk-valid", "agent_invalid", 422, None),
        ("sk-restricted", "agent_1", 401, "missing_permissions"),
        ("sk-noperm", "agent_1", 401, "missing_permissions"),
        ("nope", "agent_1", 401, "invalid_api_key"),
        ("sk-outage", "agent_1", 503, None),
    ],
)
def test_elevenlabs_agents(
    fake: FakeProviderHttp, key: str, agent: str, status: int, detail_status: str | None
) -> None:
    resp = httpx.get(
        f"{fake.elevenlabs_api_base}/v1/convai/agents/{agent}", headers={"xi-api-key": key}
    )
    assert resp.status_code == status
    body = resp.json()
    if status == 200:
        cfg = body["conversation_config"]
        assert cfg["asr"]["user_input_audio_format"] == "ulaw_8000"
        assert cfg["tts"]["agent_output_audio_format"] == "ulaw_8000"
    elif detail_status is not None:
        assert body["detail"]["status"] == detail_status


@pytest.mark.parametrize(
    ("key", "status"), [("sk-valid", 200), ("sk-restricted", 200), ("sk-noperm", 401), ("x", 401)]
)
def test_elevenlabs_signed_url(fake: FakeProviderHttp, key: str, status: int) -> None:
    resp = httpx.get(
        f"{fake.elevenlabs_api_base}/v1/convai/conversation/get-signed-url",
        params={"agent_id": "agent_1"},
        headers={"xi-api-key": key},
    )
    assert resp.status_code == status
    if status == 200:
        url = resp.json()["signed_url"]
        assert url.startswith("ws://127.0.0.1:1/ws?agent_id=agent_1&conversation_signature=")


def test_agent_formats_and_restart() -> None:
    fake = FakeProviderHttp(agent_formats={"a": ("pcm_16000", "pcm_16000")}).start()
    try:
        resp = httpx.get(f"{fake.url}/v1/convai/agents/a", headers={"xi-api-key": "sk-valid"})
        assert resp.json()["conversation_config"]["tts"]["agent_output_audio_format"] == (
            "pcm_16000"
        )
    finally:
        fake.stop()
    fake.stop()  # idempotent
    with pytest.raises(RuntimeError):
        _ = fake.url


def test_agent_overrides_are_off_unless_enabled() -> None:
    """The agent's ``platform_settings.overrides``, as ElevenLabs answers it: every override
    field off (its default: each must be enabled in the agent's Security settings), but those
    the fake was told to allow for that agent."""
    with FakeProviderHttp(agent_overrides={"open": {PROMPT_OVERRIDE}}) as fake:
        answers = {
            agent: httpx.get(
                f"{fake.url}/v1/convai/agents/{agent}", headers={"xi-api-key": "sk-valid"}
            ).json()["platform_settings"]["overrides"]["conversation_config_override"]
            for agent in ("open", "closed")
        }
    assert answers["open"]["agent"] == {
        "prompt": {"prompt": True},
        "first_message": False,
        "language": False,
    }
    assert answers["closed"]["agent"] == {
        "prompt": {"prompt": False},
        "first_message": False,
        "language": False,
    }
    assert answers["closed"]["tts"] == {"voice_id": False}
