"""Telepath rtp layer."""
