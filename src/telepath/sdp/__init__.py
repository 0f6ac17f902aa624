"""Telepath sdp layer."""
