"""How long `lightning-ft COMMAND --help` takes, against the floor of `import lightning.pytorch` (what every command
built on LightningCLI must import), side by side in one run.

    python scripts/bench_startup.py [--repeats 5] [--json startup.json]

Each measurement is a fresh process (wall time, median of the repeats, the order rotating from repeat to repeat);
the table gives seconds and the ratio to the floor, so a noisy machine shifts both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

FLOOR = [sys.executable, "-c", "import lightning.pytorch"]
COMMANDS = ["", "fit", "data", "cv", "export", "eval", "compare", "human-eval", "consolidate"]


def seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    runs = {"import lightning.pytorch": FLOOR}
    runs |= {
        f"lightning-ft {name} --help".replace("  ", " "): [
            sys.executable,
            "-m",
            "lightning_ft",
            *filter(None, [name]),
            "--help",
        ]
        for name in COMMANDS
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for repeat in range(args.repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            times[name].append(seconds(runs[name]))
    floor = statistics.median(times["import lightning.pytorch"])
    results = {name: round(statistics.median(values), 2) for name, values in times.items()}
    print(f"{'':<34} {'median s':>9} {'x floor':>8}")
    for name, value in results.items():
        print(f"{name:<34} {value:>9.2f} {value / floor:>8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"repeats": args.repeats, "seconds": results}, f, indent=2)


if __name__ == "__main__":
    main()
