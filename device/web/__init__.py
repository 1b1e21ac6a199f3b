"""The local-network search page and JSON API (Flask app served by waitress)."""
from .app import create_app
from .auth import hash_password
from .server import make_server
from .settings import WebConfigError, WebSettings, effective_host, exposure_warning, load_or_create_secret

__all__ = [
           "WebConfigError",
           "WebSettings",
           "create_app",
           "effective_host",
           "exposure_warning",
           "hash_password",
           "load_or_create_secret",
           "make_server",
]
