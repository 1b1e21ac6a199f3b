"""The local-network search page and JSON API (Flask app served by waitress)."""
from .app import create_app
from .auth import hash_password
from .serve import make_server, start_web
from .settings import WebConfigError, effective_host, exposure_warning, load_or_create_secret

__all__ = [
           "WebConfigError",
           "create_app",
           "effective_host",
           "exposure_warning",
           "hash_password",
           "load_or_create_secret",
           "make_server",
           "start_web",
]
