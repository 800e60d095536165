"""Security benchmark: the cost of TLS + bearer-token auth on lookups, against plaintext.

1. Load ``GSS_BENCH_SECURITY_RECORDS`` (default 200,000) values through the store's write
   path (bench/lookup.py's loader), and copy the store (a checkpoint) for a second server.
2. Two ``gss serve`` processes at once: one plaintext without access control, one with TLS
   (a certificate made here, tests/security_support.py) and a policy requiring a JWT with a
   scope that grants read on the galaxy.
3. The same ``bench.loadgen`` runs against each, alternately (so drift on a shared machine
   hits both alike): 100-key and 1-key calls at 64 in flight (peak keys/s, p99), and 100-key
   calls at half the plaintext peak (p99). The secure runs send the token with every call.
4. In-process: one JWT verification (PyJWT, ES256) against the server's cached lookup of an
   already verified token, µs per call.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from bench.lookup import REGISTRY, load, loadgen, serve
from contract.registry import load_registry
from contract.settings import AuthSettings, JwtSettings
from gss.auth.authenticator import Authenticator
from store.db import SignalStore
from tests.security_support import AUDIENCE, ISSUER, Authority, Signer

POLICY = """
grants:
  - scopes: [pins.read]
    galaxies: [pins]
    permissions: [read]
"""


def _token_costs(jwks: Path, policy: Path, token: str) -> dict[str, float]:
    auth = Authenticator(
        AuthSettings(
            policy_file=policy,
            jwt=JwtSettings(keys_file=jwks, issuer=ISSUER, audience=AUDIENCE),
        )
    )
    metadata = (("authorization", f"Bearer {token}"),)
    rounds = 300
    start = time.perf_counter()
    for _ in range(rounds):
        auth._verify_jwt(token)
    verify = (time.perf_counter() - start) / rounds
    auth.authenticate(metadata, dict)
    rounds = 20_000
    start = time.perf_counter()
    for _ in range(rounds):
        auth.authenticate(metadata, dict)
    cached = (time.perf_counter() - start) / rounds
    return {"token_verify_us": round(verify * 1e6, 1), "token_cached_us": round(cached * 1e6, 2)}


def run(report_dir: Path) -> dict[str, Any]:
    count = int(os.environ.get("GSS_BENCH_SECURITY_RECORDS", "200000"))
    seconds = float(os.environ.get("GSS_BENCH_SECONDS", "6"))
    work = report_dir / "data" / "security"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    registry = load_registry(REGISTRY)
    plain_data, secure_data = work / "plain", work / "secure"
    with SignalStore(plain_data, list(registry.galaxies), sync_writes=False) as store:
        load(store, count)
        store.checkpoint(secure_data)

    ca = Authority.create(work / "pki", "bench-ca")
    cert, key = ca.issue("gss.bench", server=True)
    signer = Signer.create("bench")
    jwks = signer.write_jwks(work / "jwks.json")
    policy = work / "policy.yaml"
    policy.write_text(POLICY)
    token = signer.token("bench-loadgen", ["pins.read"], expires_in=3600)
    secure_env = {
        "GSS_SERVER__TLS__CERT_FILE": str(cert),
        "GSS_SERVER__TLS__KEY_FILE": str(key),
        "GSS_SERVER__AUTH__POLICY_FILE": str(policy),
        "GSS_SERVER__AUTH__JWT__KEYS_FILE": str(jwks),
        "GSS_SERVER__AUTH__JWT__ISSUER": ISSUER,
        "GSS_SERVER__AUTH__JWT__AUDIENCE": AUDIENCE,
    }
    secure_args = ("--ca-file", str(ca.ca_file), "--server-name", "localhost", "--token", token)
    plain, plain_target = serve(plain_data)
    try:
        secure, secure_target = serve(secure_data, secure_env)
        try:
            runs: dict[str, dict[str, float]] = {}
            for keys in (100, 1):
                runs[f"plain_{keys}"] = loadgen(plain_target, count, keys, seconds)
                runs[f"secure_{keys}"] = loadgen(
                    secure_target, count, keys, seconds, extra=secure_args
                )
            rate = runs["plain_100"]["calls_per_s"] / 2
            runs["plain_half"] = loadgen(plain_target, count, 100, seconds, rate=rate)
            runs["secure_half"] = loadgen(
                secure_target, count, 100, seconds, rate=rate, extra=secure_args
            )
        finally:
            secure.terminate()
            secure.wait(timeout=30)
    finally:
        plain.terminate()
        plain.wait(timeout=30)
    costs = _token_costs(jwks, policy, token)
    shutil.rmtree(work, ignore_errors=True)
    errors = sum(int(r["errors"]) for r in runs.values())
    if errors:
        raise RuntimeError(f"{errors} lookups failed during the benchmark: {runs}")
    result: dict[str, Any] = {"records": count, "concurrency": 64, "seconds_per_run": seconds}
    for keys in (100, 1):
        plain_run, secure_run = runs[f"plain_{keys}"], runs[f"secure_{keys}"]
        result[f"plain_keys_per_s_{keys}"] = round(plain_run["keys_per_s"])
        result[f"secure_keys_per_s_{keys}"] = round(secure_run["keys_per_s"])
        result[f"ratio_{keys}"] = round(secure_run["keys_per_s"] / plain_run["keys_per_s"], 3)
        result[f"plain_p99_ms_{keys}"] = round(plain_run["p99_ms"], 2)
        result[f"secure_p99_ms_{keys}"] = round(secure_run["p99_ms"], 2)
    result["plain_p99_ms_100_at_half_peak"] = round(runs["plain_half"]["p99_ms"], 2)
    result["secure_p99_ms_100_at_half_peak"] = round(runs["secure_half"]["p99_ms"], 2)
    result.update(costs)
    return result
