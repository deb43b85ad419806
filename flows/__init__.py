"""Orchestration: Prefect flows and tasks over the domain packages, and the CLI."""
