"""Deployment: the function manifest, its rendering, and the SQL migrations."""
