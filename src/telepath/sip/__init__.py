"""Telepath sip layer."""
