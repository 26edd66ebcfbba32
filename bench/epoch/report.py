#!/usr/bin/env python3
"""Runs am_bench_epoch several times and prints medians, ranges and the
issue's targets (Markdown).

    bench/epoch/report.py build/am_bench_epoch [--runs 5] [--min-time 0.5]
                          [--filter REGEX] [--keep DIR]

Each run is a whole pass over the benchmarks, so a comparison "in the same
run" (amalloc's pin against liburcu-memb's, a map against the leak
baseline) is a ratio taken within each run; the tables give the median of
those ratios and their range over the runs.

Targets:
  pin+unpin       amalloc guard no slower than urcu-memb's read lock+unlock
                  (same run); quiescent-state mode zero (no instruction per
                  read-side section)
  retire+reclaim  am_retire at least 2x the throughput of urcu-memb call_rcu
  read-mostly map amalloc within 5% of the leak-everything baseline (on every
                  hardware thread; on one thread too, which a shared machine
                  disturbs less)
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile


def run_once(binary, min_time, flt, out_path):
    cmd = [binary, f"--benchmark_min_time={min_time}", "--benchmark_format=json",
           f"--benchmark_out={out_path}", "--benchmark_out_format=json"]
    if flt:
        cmd.append(f"--benchmark_filter={flt}")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(out_path) as f:
        return json.load(f)


def metric(b):
    """The number each benchmark is judged by (ns, or Mops/s for the map)."""
    name = b["name"]
    if name.startswith(("PinUnpin/", "QuiescentPoint/")):
        return b["per_section"] * 1e9
    if name.startswith("RetireReclaim/"):
        return b["per_retire"] * 1e9
    if name.startswith("Map/"):
        return b["items_per_second"] / 1e6
    return None


def key(name):
    # Drop the options GB appends that do not identify the case.
    name = re.sub(r"/min_time:[0-9.]+", "", name)
    name = name.replace("/manual_time", "").replace("/real_time", "")
    return name


def fmt(vals, digits=2):
    med = statistics.median(vals)
    if len(vals) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(vals):.{digits}f}–{max(vals):.{digits}f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binary")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--min-time", default="0.5")
    ap.add_argument("--filter", default="")
    ap.add_argument("--keep", help="directory for the raw JSON of each run")
    a = ap.parse_args()

    runs = []
    tmp = a.keep or tempfile.mkdtemp(prefix="am_bench_epoch.")
    os.makedirs(tmp, exist_ok=True)
    for i in range(a.runs):
        print(f"run {i + 1}/{a.runs} ...", file=sys.stderr, flush=True)
        data = run_once(a.binary, a.min_time, a.filter, os.path.join(tmp, f"run{i + 1}.json"))
        runs.append({key(b["name"]): metric(b) for b in data["benchmarks"]
                     if b.get("run_type", "iteration") == "iteration" and metric(b) is not None})
    ctx = data["context"]
    threads = ctx.get("epoch_bench_threads", "?")

    names = []
    for r in runs:
        for n in r:
            if n not in names:
                names.append(n)

    def vals(n):
        return [r[n] for r in runs if n in r]

    def ratios(num, den):
        return [r[num] / r[den] for r in runs if num in r and den in r and r[den]]

    print(f"# am_bench_epoch: {a.runs} runs, median (min–max)\n")
    print(f"{ctx.get('num_cpus')} CPUs, concurrent cases on {threads} threads; "
          f"liburcu: {ctx.get('liburcu', '?')}; host {ctx.get('host_name', '?')}\n")

    sections = [("Pin + unpin (ns per read-side section)", "PinUnpin/", "ns"),
                ("Quiescent-state announcement (ns per call)", "QuiescentPoint/", "ns"),
                ("Retire + reclaim, final barrier included (ns per retirement)", "RetireReclaim/", "ns"),
                ("Read-mostly map (Mops/s, all threads)", "Map/", "Mops/s")]
    for title, prefix, unit in sections:
        rows = [n for n in names if n.startswith(prefix)]
        if not rows:
            continue
        print(f"## {title}\n")
        print(f"| case | {unit} |\n| --- | --- |")
        for n in rows:
            print(f"| {n[len(prefix):]} | {fmt(vals(n))} |")
        print()

    print("## Targets\n")
    print("| target | measured (median of per-run values, range) | met |\n| --- | --- | --- |")

    def target(label, rs, ok, desc):
        if not rs:
            print(f"| {label} | not measured | |")
            return
        med = statistics.median(rs)
        print(f"| {label} | {desc(rs)} | {'yes' if ok(med) else 'NO'} |")

    for t in ["threads:1", f"threads:{threads}"]:
        g, m = f"PinUnpin/amalloc_guard/{t}", f"PinUnpin/urcu_memb/{t}"
        target(f"pin+unpin {t}: amalloc guard / urcu-memb <= 1", ratios(g, m), lambda x: x <= 1.0,
               lambda rs: f"{fmt(rs)} ({fmt(vals(g))} ns vs {fmt(vals(m))} ns)")
        e, q = f"PinUnpin/amalloc_executor/{t}", f"PinUnpin/urcu_qsbr/{t}"
        target(f"quiescent-state {t}: amalloc executor section = urcu-qsbr's (zero)",
               ratios(e, q), lambda x: x <= 1.1,
               lambda rs: f"{fmt(rs)} ({fmt(vals(e))} ns vs {fmt(vals(q))} ns: the loop alone)")
    a_r, u_r = "RetireReclaim/amalloc_am_retire", "RetireReclaim/urcu_memb_call_rcu"
    target("retire+reclaim: call_rcu time / am_retire time >= 2", ratios(u_r, a_r),
           lambda x: x >= 2.0,
           lambda rs: f"{fmt(rs, 1)}x ({fmt(vals(a_r), 1)} vs {fmt(vals(u_r), 1)} ns)")
    for nt in sorted({"1", str(threads)}, key=int, reverse=True):
        for upd, label in [("10", "99/1"), ("100", "90/10")]:
            leak = f"Map/leak/updates_per_mille:{upd}/threads:{nt}"
            for scheme in ["amalloc_guard", "amalloc_executor"]:
                n = f"Map/{scheme}/updates_per_mille:{upd}/threads:{nt}"
                target(f"map {label} threads:{nt} {scheme} / leak >= 0.95", ratios(n, leak),
                       lambda x: x >= 0.95,
                       lambda rs: f"{fmt(rs, 3)} ({fmt(vals(n))} vs {fmt(vals(leak))} Mops/s)")
    if not a.keep:
        for f in os.listdir(tmp):
            os.remove(os.path.join(tmp, f))
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
