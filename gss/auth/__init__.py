"""Access control of the gRPC server (docs/security.md).

- :mod:`gss.auth.identity` — :class:`Caller`, :class:`Permission`, the current caller;
- :mod:`gss.auth.policy` — the policy file: grants and static token hashes;
- :mod:`gss.auth.authenticator` — who is calling (JWT, static token, client certificate);
- :mod:`gss.auth.interceptor` — the one interceptor every call passes;
- :mod:`gss.auth.tls` — the server's TLS credentials, reloaded when the files change.
"""
