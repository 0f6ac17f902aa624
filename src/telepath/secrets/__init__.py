"""Telepath secrets layer."""
