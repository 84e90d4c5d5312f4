"""Versioned Jinja prompt templates (package data). See llm/prompts.py for the loader."""
