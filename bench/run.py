"""Run the benchmarks and write bench/report.json.

    python -m bench.run                 # every area
    python -m bench.run lookup events   # some areas; other sections of the report are kept
                                        # (and keys of a section a run did not measure)

Each area is a module bench/<area>.py with ``run(report_dir) -> dict``; its result becomes
the report's section of the same name. Figures are measured against a baseline in the same
run (raw RocksDB, raw numpy, ...) and the ratios reported.
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

AREAS = (
    "lookup",
    "events",
    "compute",
    "triton",
    "models",
    "export",
    "history",
    "security",
    "cluster",
)
BENCH_DIR = Path(__file__).resolve().parent
REPORT = BENCH_DIR / "report.json"


def main(argv: list[str]) -> int:
    areas = argv or list(AREAS)
    unknown = set(areas) - set(AREAS)
    if unknown:
        print(f"unknown areas {sorted(unknown)}; choose from {', '.join(AREAS)}", file=sys.stderr)
        return 2
    report = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    failed = []
    for area in areas:
        print(f"bench: {area} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.{area}")
            result = module.run(BENCH_DIR)
            previous = report.get(area)
            # An area that measured only some of its parts keeps the others' figures.
            report[area] = {**previous, **result} if isinstance(previous, dict) else result
        except Exception:
            traceback.print_exc()
            failed.append(area)
            continue
        print(
            f"bench: {area} done in {time.perf_counter() - start:.0f}s: {json.dumps(report[area])}",
            file=sys.stderr,
            flush=True,
        )
    report["machine"] = {
        "cpus": __import__("os").cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    REPORT.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    if "lookup" in report:
        lookup = report["lookup"]
        print(
            f"lookup: GetSignals 100-key {lookup['gss_keys_per_s_100']:,} keys/s = "
            f"{lookup['ratio_100']:.0%} of raw multi-get {lookup['raw_multiget_keys_per_s']:,} keys/s"
        )
        many = lookup.get("processes_many")
        if many and f"gss_keys_per_s_100_processes_{many}" in lookup:
            print(
                f"lookup: with {many} serving processes "
                f"{lookup[f'gss_keys_per_s_100_processes_{many}']:,} keys/s = "
                f"{lookup[f'ratio_100_processes_{many}']:.0%} of raw; 1-key "
                f"{lookup[f'gss_calls_per_s_1_processes_{many}']:,} calls/s"
            )
    print(f"wrote {REPORT.relative_to(BENCH_DIR.parent)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
