"""GSS, the Galaxy Signal Service: serve, announce and export machine-learning signals.

This package is the server side: the gRPC service (``server``, ``service``, ``reads``,
``writes``, ``metrics``), the changelog ingester, outbox publisher and event watch
(``kafka``), the snapshot exporter (``snapshot``) and the CLI (``cli``, the one face that may
import every part). The local stand-ins for one machine live apart in ``gss.local``. What
every part shares is in ``contract``; the store is ``store``, the plugin framework
``compute``, the clients ``clients`` (docs/architecture.md).
"""

__version__ = "0.1.0"
