"""Versioned Jinja prompt templates (package data): a released version is never edited. llm/prompts.py loads
them. Imports nothing."""
