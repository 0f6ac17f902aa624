"""A trunk's outbound registration (``registration``) as the API stores and shows it.

The password is sealed at once, bound to the trunk and the ``registration_password`` column,
and never shown; the contact user (``tpr-`` and 20 random hex digits) is made once per
registration and never shown either: an INVITE to it is routed to the trunk.
"""

from __future__ import annotations

import secrets

from telepath.api.errors import ApiError
from telepath.api.registration_input import RegistrationInput
from telepath.calls.ports import CONTACT_USER_PREFIX
from telepath.db.base import utcnow
from telepath.db.models import (
    REGISTRATION_PASSWORD,
    Trunk,
    TrunkRegistration,
    trunk_secret_context,
)
from telepath.secrets.keyring import Keyring, SecretDecryptionError

#: The state of a registration created or changed, until call control reports on it.
PENDING = "pending"


def new_contact_user() -> str:
    """A registration's contact user: random, so that it names one trunk and cannot be guessed."""
    return CONTACT_USER_PREFIX + secrets.token_hex(10)


def check_registration(trunk: Trunk, value: RegistrationInput | None) -> None:
    """400 ``missing_required_field`` when ``value`` would create a registration without a
    password (one omitted keeps the stored password, so only a new registration needs it)."""
    if value is not None and value.password is None and trunk.registration is None:
        raise _password_required()


def _password_required() -> ApiError:
    return ApiError(400, "missing_required_field", "registration.password is required")


def set_registration(trunk: Trunk, value: RegistrationInput | None, keyring: Keyring) -> None:
    """Create, replace or (``None``) remove the trunk's registration (checked first by
    :func:`check_registration`). A change of any setting or of the password makes it
    ``pending`` again; the same settings sent again leave its state alone."""
    if value is None:
        trunk.registration = None  # the row is deleted at the commit
        return
    now = utcnow()
    settings = {
        "registrar": value.registrar,
        "username": value.username,
        "auth_username": value.auth_username,
        "domain": value.domain,
        "outbound_proxy": value.outbound_proxy,
        "expires": value.expires,
    }
    context = trunk_secret_context(trunk.id, REGISTRATION_PASSWORD)
    current = trunk.registration
    if current is None:
        if value.password is None:  # check_registration said so already
            raise _password_required()
        trunk.registration = TrunkRegistration(
            trunk_id=trunk.id,
            **settings,
            password_enc=keyring.encrypt(value.password, context),
            contact_user=new_contact_user(),
            status=PENDING,
            updated_at=now,
        )
        return
    changed = any(getattr(current, name) != setting for name, setting in settings.items())
    if value.password is not None and not _holds(current, value.password, keyring, context):
        current.password_enc = keyring.encrypt(value.password, context)
        changed = True
    if changed:
        for name, setting in settings.items():
            setattr(current, name, setting)
        current.status = PENDING
        current.status_detail = None
        current.registered_until = None
        current.contact_address = None
        current.updated_at = now


def _holds(row: TrunkRegistration, password: str, keyring: Keyring, context: str) -> bool:
    try:
        return keyring.decrypt(row.password_enc, context) == password
    except SecretDecryptionError:
        return False
