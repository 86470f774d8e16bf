#!/usr/bin/env python3
"""Draws the fault-latency distributions `lazy-pages bench --latency-dir DIR` leaves (one ns value per line):
the C floor against lazy-pagesd's scenarios, as CDFs on a log axis.  Usage: plot-latency.py DIR OUT.png"""
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SERIES = [
    ("floor.txt", "floor: minimal C handler, 4 KiB copy", "black"),
    ("demand-fa1.txt", "lazy-pagesd (a) demand, --fault-around 1", "tab:blue"),
    ("demand.txt", "lazy-pagesd (a) demand, default fault-around", "tab:orange"),
    ("working.txt", "lazy-pagesd (c) faults during the fill", "tab:green"),
    ("concurrent.txt", "lazy-pagesd (f) 16 concurrent restores", "tab:red"),
]


def load(path):
    with open(path) as f:
        return sorted(int(line) / 1000.0 for line in f if line.strip())


def main():
    directory, out = sys.argv[1], sys.argv[2]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, label, color in SERIES:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            continue
        values = load(path)
        if not values:
            continue
        n = len(values)
        p50, p99 = values[n // 2], values[min(n - 1, int(n * 0.99))]
        ys = [(i + 1) / n for i in range(n)]
        ax.plot(values, ys, color=color, linestyle="--" if name == "floor.txt" else "-",
                label=f"{label} (n={n}, p50 {p50:.1f} us, p99 {p99:.1f} us)")
    ax.set_xscale("log")
    ax.set_xlabel("fault latency seen by the faulting thread (us, log scale)")
    ax.set_ylabel("fraction of faults")
    ax.set_title("Fault latency: lazy-pagesd vs the minimal C handler (same image, same run)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"bench: wrote {out}")


if __name__ == "__main__":
    main()
