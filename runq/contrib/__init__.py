"""Integrations with frameworks runq does not depend on; each one imports its framework only when used."""
