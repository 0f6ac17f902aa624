"""Telepath testing layer."""
