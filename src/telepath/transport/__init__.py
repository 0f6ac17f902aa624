"""Telepath transport layer."""
