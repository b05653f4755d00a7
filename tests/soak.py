#!/usr/bin/env python3
"""The sampler, the verdict and the plot of tests/soak.sh (which says what the soak is).

  soak.py sample --pidfile F --csv OUT --every S --while-pid P
      every S seconds, while process P (the load generator) lives: the server's RSS, its data
      dir's bytes, its CPU seconds and its stored-fix counter, one CSV row each
  soak.py verdict --csv F --warmup-s W [--rss-pct 5] [--drift-pct 10]
      prints the figures, exits 1 when the run fails (the rules are below)
  soak.py plot --csv F --png OUT --warmup-s W      (needs matplotlib; soak.sh installs it)
  soak.py self-test                                 the verdict on synthetic runs, stdlib only

The verdict, on the samples taken after the warm-up (t >= W):

* RSS growth: the median RSS of the last k samples over the median of the first k, minus one,
  with k = min(3, n // 3) (medians, so that one allocator spike does not decide). It fails above
  --rss-pct (5 %).
* Disk per stored fix drifts when the bytes each new fix adds grow over the run. The samples are
  split into a first and a second half; in each, the least-squares slope of data-dir bytes over
  stored fixes is the bytes one more fix costs there. It fails when the second half's slope is
  more than --drift-pct (10 %) above the first's. A slope is used rather than bytes / fixes
  because the latter falls by itself as the store's fixed start-up size is spread over more fixes,
  which would hide a per-fix cost that grows (compaction falling behind, a leak on disk).

Both need at least 6 samples after the warm-up; fewer is a failure (nothing measured), never a
pass.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path

FIELDS = ["t_s", "rss_kib", "disk_bytes", "cpu_s", "fixes_stored"]
MIN_SAMPLES = 6
TICKS = os.sysconf("SC_CLK_TCK")


# --- sampling ----------------------------------------------------------------------------------

def server_args(pid: int) -> dict[str, str]:
    """--listen and --data-dir of the running server, from its command line."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    argv = [a.decode() for a in argv if a]
    out = {}
    for i, a in enumerate(argv):
        for flag in ("--listen", "--data-dir"):
            if a == flag and i + 1 < len(argv):
                out[flag] = argv[i + 1]
            elif a.startswith(flag + "="):
                out[flag] = a.split("=", 1)[1]
    return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_s(pid: int) -> float:
    # Fields after the command name, which may hold spaces and ends at the last ')'.
    rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(rest[11]), int(rest[12])
    return (utime + stime) / TICKS


def disk_bytes(path: Path) -> int:
    # Bytes allocated, like du: sled preallocates segments, and that is what fills a volume.
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass  # a segment removed by compaction between listing and stat
    return total


def fixes_stored(listen: str) -> int:
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "[::]", ""):
        host = "127.0.0.1"
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("trackline_fixes_stored_total"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of the shell still answers kill 0; it is done all the same.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def sample(args: argparse.Namespace) -> int:
    started = time.monotonic()
    pidfile = Path(args.pidfile)
    with open(args.csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        f.flush()
        next_at = started
        while alive(args.while_pid):
            next_at += args.every
            time.sleep(max(0.0, next_at - time.monotonic()))
            if not alive(args.while_pid):
                break
            try:
                pid = int(pidfile.read_text().split()[0])
                flags = server_args(pid)
                row = [round(time.monotonic() - started, 1), rss_kib(pid),
                       disk_bytes(Path(flags["--data-dir"])), round(cpu_s(pid), 2),
                       fixes_stored(flags["--listen"])]
            except (OSError, ValueError, KeyError, RuntimeError, IndexError) as e:
                # Before the server is up or after it stopped: no row rather than a wrong one.
                print(f"soak: no sample at {time.monotonic() - started:.0f} s: {e}",
                      file=sys.stderr)
                continue
            w.writerow(row)
            f.flush()
            print(f"soak: t={row[0]:.0f} s rss={row[1] / 1024:.1f} MiB "
                  f"disk={row[2] / 2**20:.1f} MiB cpu={row[3]:.0f} s fixes={row[4]}",
                  file=sys.stderr)
    return 0


# --- the verdict -------------------------------------------------------------------------------

def read_csv(path: str) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def slope(xs: list[float], ys: list[float]) -> float | None:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    if den == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den


def judge(rows: list[dict[str, float]], warmup_s: float, rss_pct: float,
          drift_pct: float) -> tuple[bool, list[str]]:
    """(passed, lines of figures) for the samples of one run."""
    after = [r for r in rows if r["t_s"] >= warmup_s]
    lines = [f"samples: {len(rows)} in all, {len(after)} after the {warmup_s:.0f} s warm-up"]
    if len(after) < MIN_SAMPLES:
        lines.append(f"FAIL: fewer than {MIN_SAMPLES} samples after the warm-up; nothing measured")
        return False, lines
    ok = True
    k = min(3, len(after) // 3)
    rss_first = statistics.median(r["rss_kib"] for r in after[:k])
    rss_last = statistics.median(r["rss_kib"] for r in after[-k:])
    growth = (rss_last / rss_first - 1) * 100
    verdict = "ok" if growth <= rss_pct else "FAIL"
    ok &= growth <= rss_pct
    lines.append(f"RSS after warm-up: {rss_first / 1024:.1f} -> {rss_last / 1024:.1f} MiB "
                 f"({growth:+.2f} %, limit +{rss_pct:g} %): {verdict}")

    half = len(after) // 2
    parts = [after[:half + 1], after[half:]]  # the middle sample ends one half and starts the next
    slopes = [slope([r["fixes_stored"] for r in p], [r["disk_bytes"] for r in p]) for p in parts]
    fixes = after[-1]["fixes_stored"] - after[0]["fixes_stored"]
    if None in slopes or fixes <= 0:
        lines.append("FAIL: no fixes stored after the warm-up; disk per fix not measured")
        return False, lines
    drift = (slopes[1] / slopes[0] - 1) * 100 if slopes[0] > 0 else float("inf")
    if slopes[1] <= 0:
        drift = -100.0  # the second half added nothing per fix: no upward drift
    verdict = "ok" if drift <= drift_pct else "FAIL"
    ok &= drift <= drift_pct
    end = after[-1]
    lines.append(f"disk per added fix: {slopes[0]:.1f} bytes (first half) -> {slopes[1]:.1f} "
                 f"bytes (second half), {drift:+.1f} %, limit +{drift_pct:g} %: {verdict}")
    lines.append(f"disk at the end: {end['disk_bytes'] / 2**20:.1f} MiB for "
                 f"{end['fixes_stored']:.0f} stored fixes "
                 f"({end['disk_bytes'] / max(end['fixes_stored'], 1):.1f} bytes per fix)")
    span = after[-1]["t_s"] - after[0]["t_s"]
    cpu = after[-1]["cpu_s"] - after[0]["cpu_s"]
    if span > 0:
        lines.append(f"server CPU after warm-up: {cpu / span * 100:.0f} % of a core, "
                     f"{cpu / fixes * 1e6:.0f} us per stored fix, {fixes / span:.0f} fixes/s")
    return ok, lines


def verdict(args: argparse.Namespace) -> int:
    ok, lines = judge(read_csv(args.csv), args.warmup_s, args.rss_pct, args.drift_pct)
    for line in lines:
        print(f"soak: {line}")
    print(f"soak: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


# --- the plot ----------------------------------------------------------------------------------

def plot(args: argparse.Namespace) -> int:
    import matplotlib
    matplotlib.use("Agg")  # no display on a CI machine
    import matplotlib.pyplot as plt

    rows = read_csv(args.csv)
    t = [r["t_s"] / 60 for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    rss = [r["rss_kib"] / 1024 for r in rows]
    disk = [r["disk_bytes"] / 2**20 for r in rows]
    per_fix = [r["disk_bytes"] / r["fixes_stored"] if r["fixes_stored"] else float("nan")
               for r in rows]
    cpu = [float("nan")] + [
        (b["cpu_s"] - a["cpu_s"]) / (b["t_s"] - a["t_s"]) * 100 if b["t_s"] > a["t_s"] else 0
        for a, b in zip(rows, rows[1:])]
    for ax, ys, label in ((axes[0], rss, "RSS (MiB)"), (axes[1], disk, "data dir (MiB)"),
                          (axes[2], per_fix, "bytes on disk per stored fix"),
                          (axes[3], cpu, "server CPU (% of a core)")):
        ax.plot(t, ys, marker=".")
        ax.set_ylabel(label)
        ax.axvline(args.warmup_s / 60, color="grey", linestyle="--", linewidth=1)
        ax.grid(True, alpha=0.3)
    axes[0].set_title("trackline soak (dashed: end of warm-up)")
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(args.png, dpi=100)
    print(f"soak: plot in {args.png}")
    return 0


# --- the verdict's own check -------------------------------------------------------------------

def synthetic(n: int, rss_growth: float, per_fix: list[float]) -> list[dict[str, float]]:
    """n samples 30 s apart at 2000 fixes/s; per_fix[0] bytes per fix before the middle,
    per_fix[1] after; RSS grows by rss_growth over the run, with a little noise."""
    rows, disk, fixes = [], 8e6, 0.0
    for i in range(n):
        if i:
            added = 60000.0
            disk += added * (per_fix[0] if i <= n // 2 else per_fix[1])
            fixes += added
        noise = (1, -1, 0)[i % 3] * 0.002
        rows.append({"t_s": 30.0 * i, "rss_kib": 150_000 * (1 + rss_growth * i / (n - 1) + noise),
                     "disk_bytes": disk + (i % 4) * 40_000, "cpu_s": 0.2 * 30 * i,
                     "fixes_stored": fixes})
    return rows


def self_test(_: argparse.Namespace) -> int:
    cases = [
        ("flat", synthetic(60, 0.0, [37, 37]), True),
        ("RSS +3 %", synthetic(60, 0.03, [37, 37]), True),
        ("RSS +8 % over the run, +6.6 % after the warm-up", synthetic(60, 0.08, [37, 37]), False),
        ("disk per fix falling", synthetic(60, 0.0, [40, 33]), True),
        ("disk per fix +20 %", synthetic(60, 0.0, [37, 44.4]), False),
        ("too short", synthetic(5, 0.0, [37, 37]), False),
        ("nothing stored", [dict(r, fixes_stored=0.0, disk_bytes=8e6)
                            for r in synthetic(60, 0.0, [37, 37])], False),
    ]
    bad = []
    for name, rows, want in cases:
        got, lines = judge(rows, 300, 5, 10)
        if got != want:
            bad.append(f"{name}: {'passed' if got else 'failed'}, expected the other: {lines}")
    for b in bad:
        print(f"soak self-test: FAIL {b}")
    print(f"soak self-test: {len(cases) - len(bad)}/{len(cases)} synthetic runs judged right")
    return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--pidfile", required=True)
    s.add_argument("--csv", required=True)
    s.add_argument("--every", type=float, default=30.0)
    s.add_argument("--while-pid", type=int, required=True)
    s.set_defaults(run=sample)
    for name, run in (("verdict", verdict), ("plot", plot)):
        s = sub.add_parser(name)
        s.add_argument("--csv", required=True)
        s.add_argument("--warmup-s", type=float, required=True)
        s.add_argument("--rss-pct", type=float, default=5.0)
        s.add_argument("--drift-pct", type=float, default=10.0)
        if name == "plot":
            s.add_argument("--png", required=True)
        s.set_defaults(run=run)
    sub.add_parser("self-test").set_defaults(run=self_test)
    args = p.parse_args()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
