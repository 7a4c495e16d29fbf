"""The encrypted result cache (Redis or in-process) and its key material. See docs/architecture.md."""
