"""Telepath db layer."""
