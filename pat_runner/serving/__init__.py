"""The HTTP side: the batching model service, the analysis pipeline, API schemas, middlewares
(auth, audit, limits, error envelope) and the OpenAPI document. See docs/architecture.md.
"""
