"""The ragpress service: Ray Serve stage deployments and the FastAPI ingress.

Importing this package does not import Ray. The segment cache the service uses lives in
:mod:`ragpress.core.cache`: the library, LangChain and compressors reach it without the service.
"""
