"""Secrets at rest: the master keyring (AES-256-GCM), API-key hashing and SIP digest HA1."""
