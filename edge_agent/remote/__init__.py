"""Signed remote config and model updates (SPEC "Remote updates")."""
