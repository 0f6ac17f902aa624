"""The seed's own Python examples, run as written against a live ``telepath serve``.

Only ``API_KEY``, ``BASE_URL`` and the hard-coded host in ``create_trunk`` are replaced: they
point at the local server instead of api.telepathvoice.com.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import requests

from tests.integration.api.seed import CREATE_RESPONSE_FIELDS, CUSTOM, ELEVENLABS, OPENAI_REALTIME
from tests.integration.live.conftest import LiveServer

pytestmark = pytest.mark.integration


def test_python_example(live_server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    API_KEY = live_server.api_key
    BASE_URL = f"{live_server.base_url}/v1"
    # --- seed: "Python Example" -----------------------------------------------------------
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    payload = {
        "name": "Production OpenAI Agent",
        "ai_provider": "openai",
        "sip_username": "agent-prod-01",
        "sip_password": "s3cur3P@ssw0rd!",
        "openai_api_key": "sk-openai-abc123...",
        "system_prompt": "You are a helpful customer service agent.",
    }
    response = requests.post(f"{BASE_URL}/trunks", headers=headers, json=payload)
    response.raise_for_status()
    trunk = response.json()
    print(f"Created trunk: {trunk['id']}")
    print(f"SIP endpoint: {trunk['sip_endpoint']}")
    # --------------------------------------------------------------------------------------
    out = capsys.readouterr().out
    assert response.status_code == 201
    assert set(trunk) == CREATE_RESPONSE_FIELDS
    assert trunk["name"] == "Production OpenAI Agent"
    assert trunk["status"] == "active"
    assert trunk["ai_provider"] == "openai"
    assert trunk["sip_username"] == "agent-prod-01"
    assert trunk["sip_endpoint"] == "agent-prod-01@sip.example.test"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", trunk["created_at"])
    assert f"Created trunk: {trunk['id']}\nSIP endpoint: agent-prod-01@sip.example.test\n" == out
    # The error bodies the seed documents, from the live process.
    bad = requests.post(
        f"{BASE_URL}/trunks", headers=headers, json={**payload, "sip_password": None}
    )
    assert bad.status_code == 400
    assert bad.json() == {
        "error": {
            "code": "missing_required_field",
            "message": "sip_password is required",
            "status": 400,
        }
    }
    bad = requests.post(
        f"{BASE_URL}/trunks", headers=headers, json={**payload, "sip_username": "a_b"}
    )
    assert bad.json() == {
        "error": {
            "code": "invalid_sip_username",
            "message": "sip_username may only contain alphanumeric characters and hyphens",
            "status": 400,
        }
    }
    dup = requests.post(f"{BASE_URL}/trunks", headers=headers, json=payload)
    assert dup.status_code == 409
    assert dup.json() == {
        "error": {
            "code": "conflict",
            "message": "A trunk with sip_username 'agent-prod-01' already exists",
            "status": 409,
        }
    }


def test_error_handling_and_batch_examples(live_server: LiveServer) -> None:
    API_KEY = live_server.api_key
    OPENAI_KEY = "sk-openai-abc123..."
    url = f"{live_server.base_url}/v1/trunks"

    # --- seed: "Create with Error Handling" (host replaced) -------------------------------
    def create_trunk(
        api_key: str,
        name: str,
        ai_provider: str,
        sip_username: str,
        sip_password: str,
        **kwargs: Any,
    ) -> Any:
        headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        payload = {
            "name": name,
            "ai_provider": ai_provider,
            "sip_username": sip_username,
            "sip_password": sip_password,
            **kwargs,
        }
        r = requests.post(url, headers=headers, json=payload)
        if r.status_code == 409:
            raise ValueError(f"SIP username '{sip_username}' already exists")
        if r.status_code == 400:
            raise ValueError(r.json()["error"]["message"])
        r.raise_for_status()
        return r.json()

    # --- seed: "Batch Create Trunks" -------------------------------------------------------
    configs = [
        {"name": "Agent US-East", "sip_username": "agent-us-east", "ai_provider": "openai"},
        {"name": "Agent US-West", "sip_username": "agent-us-west", "ai_provider": "openai"},
        {"name": "Agent EU", "sip_username": "agent-eu", "ai_provider": "openai"},
    ]
    created = []
    for cfg in configs:
        trunk = create_trunk(
            api_key=API_KEY, sip_password="s3cur3P@ssw0rd!", openai_api_key=OPENAI_KEY, **cfg
        )
        created.append(trunk)
    # --------------------------------------------------------------------------------------
    assert [t["sip_endpoint"] for t in created] == [
        "agent-us-east@sip.example.test",
        "agent-us-west@sip.example.test",
        "agent-eu@sip.example.test",
    ]
    with pytest.raises(ValueError, match="SIP username 'agent-eu' already exists"):
        create_trunk(API_KEY, "dup", "openai", "agent-eu", "s3cur3P@ssw0rd!", openai_api_key="k")
    with pytest.raises(ValueError, match="^openai_api_key is required$"):
        create_trunk(API_KEY, "x", "openai", "agent-x", "s3cur3P@ssw0rd!")
    for body in (OPENAI_REALTIME, ELEVENLABS, CUSTOM):
        assert (
            requests.post(
                url, headers={"Authorization": f"Bearer {API_KEY}"}, json=body
            ).status_code
            == 201
        )
    listed = requests.get(url, headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert listed["pagination"]["total"] == 6


def test_restart_keeps_data_and_prints_no_new_key(live_server: LiveServer) -> None:
    from tests.integration.live.conftest import start_server, stop_server

    headers = {"Authorization": f"Bearer {live_server.api_key}"}
    created = requests.post(f"{live_server.base_url}/v1/trunks", headers=headers, json=CUSTOM)
    assert created.status_code == 201
    stop_server(live_server)
    data_dir = live_server.log_path.parent
    assert (data_dir / "secret.key").stat().st_mode & 0o777 == 0o600
    assert "generated a new master key" in live_server.log()
    first_log = live_server.log()
    again = start_server(
        data_dir, {"TELEPATH_VALIDATE_PROVIDER_KEYS": "false"}, api_key=live_server.api_key
    )
    try:
        new_output = again.log()[len(first_log) :]
        assert "sk_live_" not in new_output
        assert "generated a new master key" not in new_output
        got = requests.get(f"{again.base_url}/v1/trunks/{created.json()['id']}", headers=headers)
        assert got.status_code == 200
        assert got.json()["custom_endpoint"] == CUSTOM["custom_endpoint"]
    finally:
        stop_server(again)
