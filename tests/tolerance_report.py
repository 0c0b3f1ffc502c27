"""The worst error each tolerance of ``parity.py`` met, over logs written by test runs.

    MFM_TOLERANCE_LOG=/tmp/avx512.jsonl python -m pytest tests
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        MFM_TOLERANCE_LOG=/tmp/avx2.jsonl python -m pytest tests
    python tests/tolerance_report.py /tmp/avx512.jsonl /tmp/avx2.jsonl
"""

import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import parity


def round_up(value: float) -> float:
    """Up to one significant digit: 3.2e-6 -> 4e-6."""
    exponent = math.floor(math.log10(value))
    return math.ceil(value / 10**exponent) * 10**exponent


def main(paths: list[str]) -> None:
    worst: dict[str, dict[str, tuple[float, str]]] = defaultdict(dict)  # tolerance -> check -> (observed, log)
    for path in paths:
        for line in Path(path).read_text().splitlines():
            entry = json.loads(line)
            checks = worst[entry["tolerance"]]
            if entry["observed"] >= checks.get(entry["check"], (-1.0, ""))[0]:
                checks[entry["check"]] = (entry["observed"], Path(path).name)
    for name, checks in sorted(worst.items()):
        tolerance = getattr(parity, name)
        observed, log = max(checks.values())
        suggested = round_up(parity.MARGIN * observed) if observed > 0 else 0.0
        print(f"{name}: allows {tolerance.relative:g}; worst measured {observed:.3g} ({log}); "
              f"{parity.MARGIN}x margin suggests {suggested:g}; {len(checks)} checks")
        for check, (value, log) in sorted(checks.items(), key=lambda item: -item[1][0]):
            print(f"    {value:9.3g}  {log:14s} {check}")


if __name__ == "__main__":
    main(sys.argv[1:])
