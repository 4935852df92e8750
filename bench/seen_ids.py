"""Peak memory and time of a resumed run's duplicate check taking its committed ids at once.

A rerun of a job killed at 90% of 20M rows hands the duplicate check (intake/requests.SeenIds)
the digests of 18M committed ids in one batch (`add_digests`). This prints the time and the
process's peak RSS for N random digests (default 18M), before anything else is loaded.

    python bench/seen_ids.py              # 18,000,000 digests
    python bench/seen_ids.py 1000000
"""

from __future__ import annotations

import resource
import sys
import time

import numpy as np

from pipeline.intake.requests import SeenIds


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 18_000_000
    digests = np.random.default_rng(1).integers(0, 2**63, size=n, dtype=np.uint64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    seen = SeenIds()
    seen.add_digests(digests)
    took = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{n:,} digests: add_digests {took:.1f} s, peak RSS {peak / 1024:.0f} MiB "
          f"(before the call: {before / 1024:.0f} MiB); {seen.count:,} ids held")


if __name__ == "__main__":
    main()
