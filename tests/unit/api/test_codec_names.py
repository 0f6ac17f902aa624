"""One list of codec names: the SDP code's. TELEPATH_SIP_CODECS (``cli/preflight.py``), a
trunk's ``codecs`` and the API's documentation all take theirs from it."""

from __future__ import annotations

from typing import get_args

import pytest

from telepath.api.schemas import Trunk, _TrunkSettings
from telepath.api.trunk_input import CODECS
from telepath.sdp.negotiate import SUPPORTED_CODECS

pytestmark = pytest.mark.unit


def test_the_api_takes_the_codecs_the_sdp_code_supports() -> None:
    assert CODECS == SUPPORTED_CODECS
    for model in (_TrunkSettings, Trunk):
        annotation = model.model_fields["codecs"].annotation
        (listed, _none) = get_args(annotation)
        assert get_args(get_args(listed)[0]) == SUPPORTED_CODECS, model
