"""Telepath api routers layer."""
