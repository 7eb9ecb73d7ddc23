"""Deployment checks: Bicep parses, Functions JSON validates, settings agree, workflows are well-formed."""
