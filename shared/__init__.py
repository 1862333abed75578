"""The provisioner domain package: every business rule lives here, functions stay thin."""
