"""GSS, the Galaxy Signal Service: serve, announce and export machine-learning signals.

The server, changelog ingester, outbox publisher, snapshot exporter, settings and CLI live
here; the store is in ``store``, the plugin framework in ``compute``, the clients in
``clients``. Wire types are generated into ``contract.v1`` from proto/.
"""

__version__ = "0.1.0"
