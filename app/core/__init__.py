"""The core: events, filters, fan-out, streams and the service that wires them.

It does no HTTP and knows no web framework; the web layer (``app.web``) and the server
adapters (``app.server``) sit around it.
"""
