"""Versioned Jinja prompt templates (package data). See agent/prompts.py for the loader."""
