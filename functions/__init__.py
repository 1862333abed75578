"""Deployable functions: one small module each; parse -> call shared -> answer."""
