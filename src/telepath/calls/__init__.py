"""Telepath calls layer."""
