"""Webhooks: durable, signed delivery of account events (``docs/webhooks.md``).

``DbEventSink`` (call control's ``EventSink``) writes one outbox row per subscribed endpoint;
``WebhookDispatcher`` delivers them with retries; ``signing`` is the scheme receivers verify.
"""
