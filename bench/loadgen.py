"""A GetSignals load generator, run as its own process by bench/lookup.py.

    python -m bench.loadgen --target 127.0.0.1:50051 --keys 100 --concurrency 64 --seconds 8 \
        --entities 1000000 [--rate 1000] [--ca-file CA.pem --token JWT]

Closed loop (``--concurrency`` calls in flight) or open loop (``--rate`` calls/s). Requests
are serialized up front and responses kept as bytes, so the generator spends its CPU on
gRPC, not on protobuf. Prints one JSON object: calls, keys, seconds, latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

import grpc.aio

from contract.v1 import envelope_pb2, signal_service_pb2

METHOD = "/gss.v1.SignalService/GetSignals"


def make_requests(
    galaxy: str, signal: str, entities: int, keys: int, count: int, seed: int
) -> list[bytes]:
    rng = random.Random(seed)
    ref = envelope_pb2.SignalRef(name=signal, version=1)
    return [
        signal_service_pb2.GetSignalsRequest(
            galaxy=galaxy,
            entity_ids=[str(rng.randrange(entities)) for _ in range(keys)],
            signals=[ref],
        ).SerializeToString()
        for _ in range(count)
    ]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def run(args: argparse.Namespace) -> dict[str, float]:
    requests = make_requests(args.galaxy, args.signal, args.entities, args.keys, 2000, args.seed)
    latencies: list[float] = []
    errors = 0
    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else None
    if args.ca_file:
        # TLS (bench/security.py): the server's CA, and the name its certificate carries.
        with open(args.ca_file, "rb") as ca:
            credentials = grpc.ssl_channel_credentials(root_certificates=ca.read())
        channel_cm = grpc.aio.secure_channel(
            args.target,
            credentials,
            options=[("grpc.ssl_target_name_override", args.server_name)],
        )
    else:
        channel_cm = grpc.aio.insecure_channel(args.target)
    # More channels than one: each is its own connection, so with several server processes
    # on one port (SO_REUSEPORT) the kernel spreads them (a local subchannel pool keeps gRPC
    # from sharing one connection between channels to the same target).
    extra = [
        grpc.aio.insecure_channel(args.target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(args.channels - 1)
    ]
    async with channel_cm as channel:
        calls = [channel.unary_unary(METHOD)] + [c.unary_unary(METHOD) for c in extra]
        for each in calls:
            await each(requests[0], timeout=10, metadata=metadata)
        start = time.perf_counter()
        end = start + args.seconds

        async def one(i: int) -> None:
            nonlocal errors
            t0 = time.perf_counter()
            try:
                await calls[i % len(calls)](
                    requests[i % len(requests)], timeout=10, metadata=metadata
                )
            except grpc.aio.AioRpcError:
                errors += 1
                return
            latencies.append(time.perf_counter() - t0)

        if args.rate:
            # Open loop without a task per call: each worker fires on its own fixed schedule,
            # and latency counts from the scheduled time, so a stall is not hidden by sending
            # later (no coordinated omission).
            interval = args.concurrency / args.rate

            async def paced(w: int) -> None:
                nonlocal errors
                n = 0
                while (due := start + (w / args.concurrency + n) * interval) < end:
                    if (delay := due - time.perf_counter()) > 0:
                        await asyncio.sleep(delay)
                    try:
                        await calls[w % len(calls)](
                            requests[(w + n * args.concurrency) % len(requests)],
                            timeout=10,
                            metadata=metadata,
                        )
                    except grpc.aio.AioRpcError:
                        errors += 1
                    else:
                        latencies.append(time.perf_counter() - due)
                    n += 1

            await asyncio.gather(*(paced(w) for w in range(args.concurrency)))
        else:

            async def worker(w: int) -> None:
                i = w
                while time.perf_counter() < end:
                    await one(i)
                    i += args.concurrency

            await asyncio.gather(*(worker(w) for w in range(args.concurrency)))
        elapsed = time.perf_counter() - start
    for each_channel in extra:
        await each_channel.close()
    latencies.sort()
    return {
        "calls": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "calls_per_s": len(latencies) / elapsed,
        "keys_per_s": len(latencies) * args.keys / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--galaxy", default="pins")
    parser.add_argument("--signal", default="bench_value")
    parser.add_argument("--entities", type=int, required=True)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--channels", type=int, default=1, help="connections to spread calls on")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ca-file", default=None, help="TLS: the CA of the server's certificate")
    parser.add_argument("--server-name", default="localhost")
    parser.add_argument("--token", default=None, help="a bearer token sent with every call")
    json.dump(asyncio.run(run(parser.parse_args())), sys.stdout)


if __name__ == "__main__":
    main()
