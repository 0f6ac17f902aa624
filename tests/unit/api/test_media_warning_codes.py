"""The API's ``MediaWarning.code`` takes every code the media report can give: one it does not
know made ``GET /v1/calls/{id}`` a 500 for that record (``private_address_advertised`` was
left out of the schema when the diagnosis learnt it)."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from telepath.api.schemas import MediaWarning
from telepath.calls import diagnosis

pytestmark = pytest.mark.unit


def test_every_code_the_diagnosis_gives_is_one_the_api_takes() -> None:
    source = Path(diagnosis.__file__).read_text(encoding="utf-8")
    given = set(re.findall(r'"code": "([a-z_]+)"', source))
    assert "private_address_advertised" in given and len(given) >= 6
    taken = set(typing.get_args(MediaWarning.model_fields["code"].annotation))
    assert given <= taken, given - taken
    for code in given:  # and the model validates it
        assert MediaWarning.model_validate({"code": code, "message": "m"}).code == code
