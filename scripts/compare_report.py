#!/usr/bin/env python3
"""The report of scripts/compare: compare.md, compare.json and the charts.

Reads what scripts/compare left in RAW: manifest.tsv (one line a run),
facts.tsv (machine, versions, settings), the stdout/stderr of every run,
instructions.md (callgrind table); writes into OUT:

  compare.md        the tables (also printed by scripts/compare)
  compare.json      every run with all its numbers, medians, ratios, facts
  compare-time.png  time-like ratio to the reference per workload
  compare-rss.png   peak RSS ratio to the reference per workload
  NAME-rss.png      RSS over time of a workload with an rss_kib series
                    (bursty-rss.png)
  latency.png       latency percentiles of the workloads reporting latency_ns

Exit status 0, or 3 when there were timed runs and every one failed.
"""
import argparse
import csv
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys

KIND_TITLE = {  # markdown
    "micro": "micro-benchmarks (`am_bench_throughput`, ns per item)",
    "frames": "coroutine frames (`am_bench_frames`, ns per frame): global new, Asio's recycling",
    "program": "`am_workload` (wall seconds of the whole process)",
    "wl": "workload programs (`am_wl_*`, their primary metric)",
}
KIND_MD = {"micro": "micro-benchmarks", "frames": "coroutine frames", "program": "`am_workload`",
           "wl": "`am_wl_*` programs"}
KIND_SHORT = {"micro": "micro-benchmarks", "frames": "frames", "program": "am_workload",
              "wl": "am_wl_* programs"}
COLORS = {"glibc": "#7f7f7f", "jemalloc": "#1f77b4", "mimalloc": "#2ca02c",
          "tcmalloc": "#ff7f0e", "amalloc": "#d62728"}
EXTRA_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
PCTS = [("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")]


def color_of(allocs, a):
    if a in COLORS:
        return COLORS[a]
    extras = [x for x in allocs if x not in COLORS]
    return EXTRA_COLORS[extras.index(a) % len(EXTRA_COLORS)]


def is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_facts(path):
    facts = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("\t")
            facts[k] = v
    return facts


def signame(n):
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def tail(path, n=3):
    try:
        with open(path, errors="replace") as f:
            lines = [x.rstrip() for x in f if x.strip()]
        return lines[-n:]
    except OSError:
        return []


def parse_ambench(text, name, size, warn):
    """The AMBENCH object of a run's stdout, or (None, reason)."""
    lines = text.splitlines()
    amb = [x for x in lines if x.startswith("AMBENCH ")]
    other = [x for x in lines if x.strip() and not x.startswith("AMBENCH ")]
    if other:
        warn(f"stdout has {len(other)} line(s) besides the AMBENCH line "
             f"(first: {other[0][:60]!r}); human-readable text belongs on stderr")
    if not amb:
        return None, "no AMBENCH line on stdout"
    if len(amb) > 1:
        warn(f"{len(amb)} AMBENCH lines on stdout (the protocol says exactly one; the last was used)")
    try:
        obj = json.loads(amb[-1][len("AMBENCH "):])
    except ValueError as e:
        return None, f"the AMBENCH line is not valid JSON ({e})"
    if not isinstance(obj, dict):
        return None, "the AMBENCH line is not a JSON object"
    metrics = obj.get("metrics")
    if not isinstance(metrics, dict):
        return None, "AMBENCH has no metrics object"
    prim = obj.get("primary")
    if prim not in metrics or not is_num(metrics[prim]) or metrics[prim] <= 0:
        return None, f"AMBENCH primary {prim!r} is not a positive number in metrics"
    if obj.get("better") not in ("higher", "lower"):
        return None, f"AMBENCH better is {obj.get('better')!r}, not 'higher' or 'lower'"
    if obj.get("workload") != name:
        warn(f"AMBENCH workload is {obj.get('workload')!r}, the program is am_wl_{name}")
    if obj.get("size") != size:
        warn(f"AMBENCH size is {obj.get('size')!r}, the run asked for --size {size}")
    if not is_num(metrics.get("time_s")):
        warn("metrics has no time_s")
    if not isinstance(obj.get("threads"), int):
        warn("AMBENCH has no threads count")
    if not isinstance(obj.get("checksum"), str):
        warn("AMBENCH has no checksum string")
    if not isinstance(obj.get("checksum_ok"), bool):
        warn("AMBENCH checksum_ok is not a boolean")
    lat = obj.get("latency_ns")
    if lat is not None and not (isinstance(lat, dict) and all(is_num(lat.get(k)) for k, _ in PCTS)):
        warn("latency_ns is not an object with numbers p50, p99, p999")
    ser = obj.get("series")
    if ser is not None:
        if not isinstance(ser, dict):
            warn("series is not an object")
        else:
            for k, v in ser.items():
                if not (isinstance(v, list) and all(isinstance(p, list) and len(p) == 2
                                                    and all(is_num(x) for x in p) for p in v)):
                    warn(f"series {k} is not a list of [t_ms, value] pairs")
    return obj, None


def classify(r, raw, facts, warn):
    """Fills r['ok'], r['fail'] (short code), r['reason'], r['value'] ..."""
    rc = r["exit"]
    out_path = os.path.join(raw, r["id"] + ".out")
    try:
        with open(out_path, errors="replace") as f:
            text = f.read()
    except OSError:
        text = ""
    r["ok"], r["fail"], r["reason"] = False, None, None
    r["value"], r["metric"], r["better"] = None, None, "lower"

    def fail(code, reason):
        r["fail"], r["reason"] = code, reason

    if r["timed_out"]:
        return fail("time-out", f"killed after the time-out of {facts.get('timeout_s', '?')} s")
    if r["kind"] == "wl":
        amb, why = parse_ambench(text, r["workload"], facts.get("size"), warn)
        r["ambench"] = amb
        if amb is not None:
            r["metric"], r["better"] = amb["primary"], amb["better"]
        if rc == 3:
            return fail("wrong", "wrong result: exit 3, checksum_ok "
                        + str(amb.get("checksum_ok")).lower() if amb else "wrong result: exit 3")
        if rc == 2:
            return fail("usage", "bad usage (exit 2)")
        if rc > 128:
            sig = signame(rc - 128)
            if sig == "SIGALRM":
                return fail("time-out", "stopped by its own hard time cap (SIGALRM)")
            return fail("crash", f"crash ({sig})")
        if rc != 0:
            return fail("exit", f"exit status {rc}")
        if amb is None:
            return fail("output", why)
        if amb.get("checksum_ok") is not True:
            return fail("wrong", "wrong result: checksum_ok is not true (exit 0)")
        r["value"] = float(amb["metrics"][amb["primary"]])
        r["ok"] = True
        return None
    if rc != 0:
        return fail("crash" if rc > 128 else "exit",
                    f"crash ({signame(rc - 128)})" if rc > 128 else f"exit status {rc}")
    if r["kind"] in ("micro", "frames"):
        try:
            data = json.loads(text)
            b = [x for x in data.get("benchmarks", []) if x.get("run_type", "iteration") == "iteration"]
        except (ValueError, AttributeError):
            return fail("output", "no Google Benchmark JSON on stdout")
        if not b:
            return fail("output", "no benchmark in the output")
        if b[0].get("error_occurred"):
            return fail("wrong", "benchmark error: " + str(b[0].get("error_message", ""))[:80])
        ips = b[0].get("items_per_second")
        if r["kind"] == "frames" and is_num(b[0].get("ns_per_frame")):
            r["value"], r["metric"] = float(b[0]["ns_per_frame"]), "ns/frame"
        elif ips:
            r["value"], r["metric"] = 1e9 / ips, "ns/item"
        else:
            scale = {"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}.get(b[0].get("time_unit", "ns"), 1)
            r["value"], r["metric"] = b[0]["real_time"] * scale, "ns/iter"
        r["gbench"] = b[0]
    else:
        r["value"], r["metric"] = r["wall_s"], "s"
    r["ok"] = True
    return None


# ---- formatting ---------------------------------------------------------------

def num(v):
    if v is None:
        return "-"
    a = abs(v)
    for lim, div, suf in ((1e12, 1e12, "T"), (1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if a >= lim:
            x = v / div
            return f"{x:.3g}{suf}" if abs(x) < 1000 else f"{x:.0f}{suf}"
    if a >= 100 or v == int(v):
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def ratio(v):
    if v is None:
        return "-"
    return f"{v:.2f}" if v >= 0.095 else f"{v:.2g}"


def geomean(xs):
    xs = [x for x in xs if x]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def is_speed(kind, metric):
    """A time or a throughput (not a memory figure such as rss_after_1s_pct)."""
    return (kind in ("micro", "frames", "program") or metric == "time_s"
            or (metric or "").endswith("_per_s"))


def short(name):
    return name.replace("BM_", "").replace("/threads:", " t")


def frame_source(w):
    """BM_FrameOne/pools -> pools (am_bench_frames' names: BM_Frame{One,Cross}/SOURCE)."""
    return w.rsplit("/", 1)[-1]


def is_frame_extra(w, kinds):
    """A frame source that is not the global operator new nor Asio's recycling
    (amalloc's pools, the unsynchronised list): it runs under one or two
    preloads only, so it is not a row of the allocator tables."""
    return kinds[w] == "frames" and frame_source(w) in ("pools", "list")


def frames_section(order_all, kinds, agg, allocs, runs):
    """The coroutine-frame table (one row per frame source and preloaded
    allocator; one executor and across two) and the two targets of the frame
    pools. Returns the markdown lines and the JSON object (None: no frames)."""
    ws = {w for w in order_all if kinds[w] == "frames"}
    if not ws:
        return [], None

    def label(source, a):
        if source == "global":
            return f"global operator new, {a}" + (" (no preload)" if a == "glibc" else "")
        if source == "pools":
            return ("amalloc frame pools (amalloc preloaded)" if a == "amalloc"
                    else f"amalloc frame pools + {a} global")
        if source == "list":
            return f"unsynchronised thread-local list + {a} global"
        if source == "asio":
            return f"Boost.Asio recycling + {a} global"
        return f"{source}, {a}"

    def stat(w, a):
        g = agg.get((w, a)) if w in ws else None
        if g is None:
            return None
        return dict(median=g["median"], min=g["min"], max=g["max"], runs=g["runs"], failed=g["failed"])

    rows = []
    for source in ("global", "pools", "list", "asio"):
        # The pools under amalloc first, then beside another global allocator.
        for a in sorted(allocs, key=lambda a: source == "pools" and a != "amalloc"):
            one, cross = stat("BM_FrameOne/" + source, a), stat("BM_FrameCross/" + source, a)
            if one or cross:
                rows.append(dict(source=source, allocator=a, label=label(source, a), one=one, cross=cross))

    def cell(st):
        if st is None:
            return "-"
        if st["failed"]:
            return "**FAIL**"
        if st["runs"] > 1:
            return f"{num(st['median'])} ({num(st['min'])}–{num(st['max'])})"
        return num(st["median"])

    md = ["## Coroutine frames: create + resume + destroy (`am_bench_frames`, ns per frame)\n",
          "A coroutine with a 200-byte local buffer. One executor: created, resumed to the end and "
          "destroyed on one thread. Across two: created on one thread, handed over a blocking ring, "
          "resumed and destroyed on another; the time runs from the first creation to the last "
          "destruction. Median over the runs (in parentheses the fastest and the slowest run).\n",
          "| frames from | one executor | across two |", "|---|---:|---:|"]
    md += [f"| {r['label']} | {cell(r['one'])} | {cell(r['cross'])} |" for r in rows]
    md.append("")
    # Each cross-thread run measures how long a cache line takes from one
    # core to the other, before and after its timed part: the slower of the
    # two says whether the run was near, far or disturbed.
    c2c = sorted(max(b, a) for r in runs if r["kind"] == "frames" and r["ok"]
                 for b, a in [(r["gbench"].get("c2c_ns_before"), r["gbench"].get("c2c_ns_after"))]
                 if is_num(b) and is_num(a))
    if c2c:
        far = sum(1 for v in c2c if v > 120)
        md.append(f"A cache line took {num(statistics.median(c2c))} ns from one core to the other "
                  f"(median over the cross-thread runs, the slower of their `c2c_ns_before` and "
                  f"`c2c_ns_after`); {far} of {len(c2c)} runs saw over 120 ns (threads placed far "
                  "apart, or preempted), which typically makes a run 3-4x slower whatever its "
                  "frames come from.\n")

    def med(source, a, case):
        r = next((r for r in rows if r["source"] == source and r["allocator"] == a), None)
        st = r and r[case]
        return st["median"] if st and not st["failed"] and st["median"] else None

    targets = []
    lst = med("list", "amalloc", "one")
    peers = [(med(r["source"], r["allocator"], "cross"), r["label"]) for r in rows
             if r["source"] in ("global", "asio") and r["allocator"] != "amalloc"]
    peers = [p for p in peers if p[0]]
    best = min(peers) if peers else None
    for a in ("amalloc", "mimalloc"):
        name = label("pools", a)
        one, cross = med("pools", a, "one"), med("pools", a, "cross")
        if one and lst:
            q = one / lst
            targets.append(dict(what=f"{name}, one executor: time / the unsynchronised list's",
                                value=q, target="<= 1.15", met=q <= 1.15))
        if cross and best:
            q = best[0] / cross
            targets.append(dict(what=f"{name}, across two: how many times faster than the best peer "
                                     f"({best[1]}, {num(best[0])} ns)",
                                value=q, target=">= 1.3", met=q >= 1.3))
    if targets:
        md.append("| what | measured | target | met |")
        md.append("|---|---:|---:|---|")
        for t in targets:
            md.append(f"| {t['what']} | {t['value']:.2f} | {t['target']} | {'yes' if t['met'] else '**no**'} |")
        md.append("\nPeers: the global operator new and Asio's recycling under every allocator but "
                  "amalloc.\n")
    return md, dict(rows=rows, targets=targets,
                    c2c_ns=dict(median=statistics.median(c2c), over_120=far, runs=len(c2c)) if c2c else None)


def median_run(runs):
    """The run holding the median value (lower middle of an even count)."""
    rs = sorted(runs, key=lambda r: r["value"])
    return rs[(len(rs) - 1) // 2] if rs else None


# ---- charts -------------------------------------------------------------------

def gp_str(s):
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def chart_panels(order, kinds, maxw=13):
    """Splits the workloads into panels of at most maxw, along kind groups."""
    groups = []
    for w in order:
        if groups and groups[-1][0] == kinds[w]:
            groups[-1][1].append(w)
        else:
            groups.append((kinds[w], [w]))
    chunks = []
    for k, ws in groups:
        parts = math.ceil(len(ws) / maxw)
        size = math.ceil(len(ws) / parts)
        chunks += [(k, ws[i:i + size]) for i in range(0, len(ws), size)]
    panels = []
    for c in chunks:
        if panels and sum(len(x[1]) for x in panels[-1]) + len(c[1]) <= maxw:
            panels[-1].append(c)
        else:
            panels.append([c])
    return panels


def ratio_chart(path, dat_dir, stem, title, ylabel, order, kinds, allocs, ref, values, fails):
    """Grouped bars from 1 to the ratio, log scale; FAIL marked in red. One
    panel per kind of workload (at most 13 workloads a panel)."""
    n = len(allocs)
    bw = 0.8 / n
    vals = [v for v in values.values() if v]
    if not vals:
        return None
    lo = 2.0 ** math.floor(math.log2(min(min(vals), 1.0) / 1.05))
    hi = 2.0 ** math.ceil(math.log2(max(max(vals), 1.0) * 1.05))
    lo, hi = max(lo, 1 / 16), min(hi, 16)
    if hi <= 1:
        hi = 2
    if lo >= 1:
        lo = 0.5
    panels = chart_panels(order, kinds)
    if not panels:  # e.g. only memory workloads were selected
        return None
    maxw = max(sum(len(ws) for _, ws in p) for p in panels)
    fine = math.log2(hi / lo) <= 4
    ytics = ", ".join(f'"{t:g}" {t}' for t in (1 / 16, 1 / 8, 1 / 4, 1 / 2, 0.75, 1, 1.5, 2, 3, 4, 8, 16)
                      if lo <= t <= hi and (fine or t not in (0.75, 1.5, 3)))
    plots = []
    for pi, panel in enumerate(panels):
        ws = [w for _, g in panel for w in g]
        dat = os.path.join(dat_dir, f"{stem}-{pi}.dat")
        labels = []
        with open(dat, "w") as f:
            for j, a in enumerate(allocs):
                f.write(f"# {a}\n")
                for i, w in enumerate(ws):
                    v = values.get((w, a))
                    x = i + (j - (n - 1) / 2) * bw
                    if v:
                        c = min(max(v, lo), hi)
                        # From 1 to the ratio; at least a sliver, so that a ratio of 1 shows.
                        y0, y1 = (min(1, c), max(1, c)) if abs(math.log2(c)) > 0.02 else (c / 1.014, c * 1.014)
                        f.write(f"{x:.4f} {c:.5g} {x - bw / 2:.4f} {x + bw / 2:.4f} {y0:.5g} {y1:.5g}\n")
                        if c != v:
                            y = hi / 1.08 if v > hi else lo * 1.08
                            labels.append(f'set label {gp_str(ratio(v))} at {x:.4f},{y:.5g} '
                                          f'rotate by 90 {"right" if v > hi else "left"} font ",8" front')
                    elif (w, a) in fails:
                        labels.append(f'set label "FAIL" at {x:.4f},1.05 rotate by 90 left '
                                      f'font ",8" tc rgb "red" front')
                f.write("NaN NaN NaN NaN NaN NaN\n\n\n")  # an empty block keeps its index
        for i, w in enumerate(ws):
            if (w, ref) in fails:
                labels.append(f'set label "no ratios:\\n{ref} FAILED" at {i},{(hi / lo) ** -0.12:.5g} center '
                              f'font ",8" tc rgb "red" front')
        i0 = 0
        for gi, (k, g) in enumerate(panel):
            if gi > 0:
                labels.append(f"set arrow from {i0 - 0.5},graph 0 to {i0 - 0.5},graph 1 nohead dt 3 "
                              "lc rgb 'gray40'")
            labels.append(f'set label {gp_str(KIND_SHORT[k])} at {i0 + (len(g) - 1) / 2:.2f},graph 1.04 '
                          'center font ",10"')
            i0 += len(g)
        xt = ", ".join(f"{gp_str(short(w))} {i}" for i, w in enumerate(ws))
        height = 440 * len(panels) + 50
        key = (f"set key at screen 0.995,screen {1 - 45 / height:.4f} right top vertical"
               if pi == 0 else "unset key")
        plot = ", ".join(f'{gp_str(dat)} index {j} using 1:2:3:4:5:6 with boxxyerror '
                         f'lc rgb {gp_str(color_of(allocs, a))} title {gp_str(a)}' for j, a in enumerate(allocs))
        plots.append(f"""unset label
unset arrow
{key}
set xtics ({xt}) rotate by 35 right scale 0 font ",10"
{chr(10).join(labels)}
plot {plot}, 1 with lines lc rgb "black" lw 1.5 notitle
""")
    width = max(1100, 260 + 95 * maxw)
    gp = os.path.join(dat_dir, stem + ".gp")
    with open(gp, "w") as f:
        f.write(f"""set terminal pngcairo size {width},{height} noenhanced font ",10"
set output {gp_str(path)}
set logscale y 2
set yrange [{lo}:{hi}]
set ytics ({ytics})
set mytics 2
set grid ytics
set ylabel {gp_str(ylabel)}
set xrange [-0.6:{maxw - 0.4}]
set lmargin 10
set rmargin 16
set tmargin 3
set bmargin 7
set style fill solid 0.9 border rgb "gray20"
set multiplot layout {len(panels)},1 title {gp_str(title)} font ",12"
{"".join(plots)}unset multiplot
""")
    return gp


def series_chart(path, dat_dir, name, allocs, picked):
    """RSS over time, one line per allocator."""
    dat = os.path.join(dat_dir, name + "-rss.dat")
    used = []
    with open(dat, "w") as f:
        for a in allocs:
            r = picked.get(a)
            if not r:
                continue
            f.write(f"# {a}\n")
            for t, v in r["ambench"]["series"]["rss_kib"]:
                f.write(f"{t / 1000:.4f} {v / 1024:.4f}\n")
            f.write("\n\n")
            used.append((a, r))
    if not used:
        return None
    pts = used[0][1]["ambench"]["series"]["rss_kib"]
    steps = sorted(b[0] - a[0] for a, b in zip(pts, pts[1:]))
    every = f", sampled every {steps[len(steps) // 2]:g} ms" if steps else ""
    gp = os.path.join(dat_dir, name + "-rss.gp")
    plots = ", ".join(f'{gp_str(dat)} index {k} using 1:2 with lines lw 2 lc rgb {gp_str(color_of(allocs, a))} '
                      f'title {gp_str(a + " (rep " + str(r["rep"]) + ")")}' for k, (a, r) in enumerate(used))
    with open(gp, "w") as f:
        f.write(f"""set terminal pngcairo size 1100,560 noenhanced font ",10"
set output {gp_str(path)}
set title {gp_str(f"{name}: resident set over time (the median run of each allocator{every})")}
set xlabel "time since the start of the measured part (s)"
set ylabel "RSS (MiB)"
set yrange [0:*]
set grid
set key outside right top vertical
plot {plots}
""")
    return gp


def latency_chart(path, dat_dir, lat_wls, allocs, lat, fails):
    """Per workload a panel: p50/p99/p99.9 clusters, one bar per allocator."""
    if not lat_wls:
        return None
    n = len(allocs)
    bw = 0.8 / n
    cols = 1 if len(lat_wls) == 1 else 2
    rows = (len(lat_wls) + cols - 1) // cols
    gp = os.path.join(dat_dir, "latency.gp")
    panels = []
    for w in lat_wls:
        vals = [lat[(w, a)][k] for a in allocs if (w, a) in lat for k, _ in PCTS if lat[(w, a)][k] > 0]
        if not vals:
            continue
        lo = 10.0 ** math.floor(math.log10(min(vals)))
        hi = 10.0 ** math.ceil(math.log10(max(vals) * 1.5))
        dat = os.path.join(dat_dir, f"latency-{w}.dat")
        labels = []
        with open(dat, "w") as f:
            for j, a in enumerate(allocs):
                f.write(f"# {a}\n")
                for i, (k, _) in enumerate(PCTS):
                    x = i + (j - (n - 1) / 2) * bw
                    v = lat.get((w, a), {}).get(k)
                    if v and v > 0:
                        f.write(f"{x:.4f} {v:.5g} {x - bw / 2:.4f} {x + bw / 2:.4f} {lo:.5g} {v:.5g}\n")
                    elif (w, a) in fails:
                        labels.append(f'set label "FAIL" at {x:.4f},{lo * 1.2:.5g} rotate by 90 left '
                                      f'font ",8" tc rgb "red" front')
                f.write("NaN NaN NaN NaN NaN NaN\n\n\n")  # an empty block keeps its index
        plot = ", ".join(f'{gp_str(dat)} index {j} using 1:2:3:4:5:6 with boxxyerror '
                         f'lc rgb {gp_str(color_of(allocs, a))} title {gp_str(a)}'
                         for j, a in enumerate(allocs))
        panels.append(f"""unset label
set title {gp_str(f"{w}: latency percentiles (median over runs)")}
set yrange [{lo:g}:{hi:g}]
{chr(10).join(labels)}
plot {plot}
""")
    if not panels:
        return None
    with open(gp, "w") as f:
        f.write(f"""set terminal pngcairo size {620 * cols + 120},{360 * rows + 20} noenhanced font ",10"
set output {gp_str(path)}
set logscale y 10
set format y "%.0s%c"
set ylabel "ns (log scale)"
set grid ytics
set xrange [-0.6:{len(PCTS) - 0.4}]
set xtics ({", ".join(f'"{lbl}" {i}' for i, (_, lbl) in enumerate(PCTS))}) scale 0
set style fill solid 0.9 border rgb "gray20"
set key outside right top vertical
set multiplot layout {rows},{cols}
{"".join(panels)}unset multiplot
""")
    return gp


# ---- main ---------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--allocators", required=True)
    args = ap.parse_args()
    raw, out = args.raw, args.out
    allocs = [a for a in args.allocators.split(",") if a]
    facts = read_facts(os.path.join(raw, "facts.tsv"))
    ref = facts.get("reference") or allocs[0]

    warnings = {}   # workload -> ordered unique protocol warnings

    runs, order, kinds = [], [], {}
    with open(os.path.join(raw, "manifest.tsv")) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) < 12:
                continue
            rep, name, kind, alloc, rc, wall_ns, rss, user, sys_s, rid, tmo, cmd = p[:12]
            if name not in kinds:
                order.append(name)
                kinds[name] = kind
            r = dict(workload=name, kind=kind, allocator=alloc, rep=int(rep), exit=int(rc),
                     wall_s=int(wall_ns) / 1e9, peak_rss_kib=int(rss) if rss else None,
                     user_s=float(user) if user else None, sys_s=float(sys_s) if sys_s else None,
                     timed_out=tmo == "1", command=cmd, id=rid)

            def warn(msg, name=name):
                lst = warnings.setdefault(name, [])
                if msg not in lst:
                    lst.append(msg)
            classify(r, raw, facts, warn)
            if not r["ok"]:
                r["stderr_tail"] = tail(os.path.join(raw, rid + ".err"))
            runs.append(r)
    kind_rank = {"micro": 0, "frames": 1, "program": 2, "wl": 3}
    order.sort(key=lambda w: kind_rank.get(kinds[w], 4))  # stable: keeps run order within a kind

    # Medians per (workload, allocator).
    agg = {}
    for w in order:
        for a in allocs:
            rs = [r for r in runs if r["workload"] == w and r["allocator"] == a]
            if not rs:
                continue
            good = [r for r in rs if r["ok"]]
            bad = [r for r in rs if not r["ok"]]
            vals = [r["value"] for r in good]
            rss = [r["peak_rss_kib"] for r in good if r["peak_rss_kib"] is not None]
            codes = []
            for r in bad:
                if r["fail"] not in codes:
                    codes.append(r["fail"])
            agg[(w, a)] = dict(
                runs=len(rs), ok=len(good), failed=len(bad), fail_codes=codes,
                metric=good[0]["metric"] if good else None, better=good[0]["better"] if good else None,
                median=statistics.median(vals) if vals else None,
                min=min(vals) if vals else None, max=max(vals) if vals else None,
                peak_rss_kib=statistics.median(rss) if rss else None,
                capped=sum(1 for r in good if (r.get("ambench") or {}).get("metrics", {}).get("capped")))
    metric_of, better_of = {}, {}
    for w in order:
        ms = [(g["metric"], g["better"]) for (x, a), g in agg.items() if x == w and g["metric"]]
        metric_of[w], better_of[w] = ms[0] if ms else (None, None)
        if len(set(ms)) > 1:
            warnings.setdefault(w, []).append(f"the primary metric differs between runs: {sorted(set(ms))}")
    for (w, a), g in agg.items():
        r = agg.get((w, ref))
        usable = g["failed"] == 0 and g["median"] and r and r["failed"] == 0 and r["median"]
        if usable:
            g["time_ratio"] = (g["median"] / r["median"] if g["better"] != "higher"
                               else r["median"] / g["median"])
        else:
            g["time_ratio"] = None
        g["rss_ratio"] = (g["peak_rss_kib"] / r["peak_rss_kib"]
                          if usable and g["peak_rss_kib"] and r["peak_rss_kib"] else None)

    fails = {(w, a) for (w, a), g in agg.items() if g["failed"]}
    speed = {w: is_speed(kinds[w], metric_of[w]) for w in order}
    # The frame pools and the list have their own table (frames_section);
    # every other table, mean and chart is over `order`.
    order_all = order
    order = [w for w in order_all if not is_frame_extra(w, kinds)]
    no_ref = [w for w in order if (w, ref) in agg and agg[(w, ref)]["failed"]]
    f3 = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731

    def cell(w, a, which):
        g = agg.get((w, a))
        if g is None:
            return "-"
        if g["failed"]:
            part = "" if g["ok"] == 0 else f" {g['failed']}/{g['runs']}"
            return f"**FAIL** ({', '.join(g['fail_codes'])}{part})"
        if which == "time":
            s = num(g["median"])
            if g["time_ratio"] is not None:
                s += f" ({ratio(g['time_ratio'])})"
            if g["capped"]:
                s += " c"
            return s
        if g["peak_rss_kib"] is None:
            return "-"
        s = f"{g['peak_rss_kib'] / 1024:.1f}"
        return s + (f" ({ratio(g['rss_ratio'])})" if g["rss_ratio"] is not None else "")

    # ---- compare.md ----
    nproc = facts.get("nproc", "?")
    md = ["# Allocator comparison", ""]
    n_fail_runs = sum(1 for r in runs if not r["ok"])
    if facts.get("build_ok") == "0":
        md.append("**The build FAILED**: programs that did not build are missing or stale.\n")
    if n_fail_runs:
        md.append(f"**{n_fail_runs} of {len(runs)} runs FAILED** ({len(fails)} FAIL cells); "
                  "the list is at the end.\n")
    md.append(f"- date: {facts.get('date')}")
    md.append(f"- machine: {facts.get('cpu') or 'unknown CPU'}, {nproc} cores online, "
              f"{facts.get('mem_gib', '?')} GiB, kernel {facts.get('kernel')}")
    md.append(f"- ran on {nproc} cores; load average before the runs: {facts.get('load_before')}, "
              f"after: {facts.get('load_after')}")
    threads = {}
    for r in runs:
        t = (r.get("ambench") or {}).get("threads")
        if isinstance(t, int):
            threads.setdefault(t, set()).add(r["workload"])
    if threads:
        md.append("- threads of the am_wl_* programs (from their AMBENCH lines): " + "; ".join(
            f"{t} ({', '.join(sorted(ws))})" for t, ws in sorted(threads.items())))
    shortened = {k.split(".", 1)[1]: int(v) for k, v in facts.items() if k.startswith("shortened.")}
    mode = (f"- mode: {facts.get('mode')}, {facts.get('reps')} repetitions interleaved "
            f"(a b c d e, a b c d e, ...); am_wl_* with --size {facts.get('size')}; "
            f"time-out {facts.get('timeout_s')} s a run; Google Benchmark min time {facts.get('min_time')} s; "
            f"am_workload {', '.join((facts.get('prog_modes') or '-').split())} at scale {facts.get('scale')}")
    md.append(mode)
    if shortened:
        md.append("- only 1 repetition (runs over " + facts.get("long_s", "?") + " s in --quick): "
                  + ", ".join(f"{w} ({ms / 1000:.1f} s a run)" for w, ms in shortened.items())
                  + "; its medians are single runs")
    md.append(f"- time: {len(runs)} timed runs in {int(facts.get('runs_s', 0)) // 60}:"
              f"{int(facts.get('runs_s', 0)) % 60:02d}, callgrind {facts.get('callgrind_s', 0)} s, "
              f"report written {facts.get('elapsed_s')} s after the start")
    md.append(f"- command: `{facts.get('command')}`; amalloc git {facts.get('amalloc_git')}")
    md.append("- allocators:")
    for a in allocs:
        lib = facts.get(f"alloc.{a}.lib")
        md.append(f"  - {a} {facts.get(f'alloc.{a}.version')}" + (f" (LD_PRELOAD={lib})" if lib else " (no preload)"))
    md.append("")

    if order:
        md.append(f"## Time or throughput: the primary metric of each workload (median; in parentheses the time-like ratio to {ref}: below 1 is better)\n")
        md.append(f"For a higher-is-better metric (↑, e.g. ops_per_s) the ratio is {ref}'s value / this "
                  f"value; for a lower-is-better one (↓) it is this value / {ref}'s; so every ratio "
                  "reads like a time. **FAIL** (reason): a run crashed, timed out, gave a wrong result "
                  "or printed no result (the list is at the end). c: stopped early by its own time cap.\n")
        md.append("| workload | metric | " + " | ".join(allocs) + " |")
        md.append("|---|---|" + "---:|" * len(allocs))
        last = None
        for w in order:
            if kinds[w] != last:
                md.append(f"| *{KIND_TITLE[kinds[w]]}* | |" + " |" * len(allocs))
                last = kinds[w]
            m = metric_of[w] or "-"
            if kinds[w] == "wl" and metric_of[w]:
                m += " ↑" if better_of[w] == "higher" else " ↓"
            md.append(f"| {w} | {m} | " + " | ".join(cell(w, a, "time") for a in allocs) + " |")
        md.append("")
        if no_ref:
            md.append(f"No ratios for {', '.join(no_ref)}: {ref}, the reference, FAILED there.\n")
        md.append(f"## Peak RSS (median MiB of the process, /usr/bin/time %M; in parentheses the ratio to {ref})\n")
        md.append("| workload | " + " | ".join(allocs) + " |")
        md.append("|---|" + "---:|" * len(allocs))
        last = None
        for w in order:
            if kinds[w] != last:
                md.append(f"| *{KIND_MD[kinds[w]]}* |" + " |" * len(allocs))
                last = kinds[w]
            md.append(f"| {w} | " + " | ".join(cell(w, a, "rss") for a in allocs) + " |")
        md.append("")

        md.append(f"## Geometric means of the ratios to {ref} (lower is better)\n")
        others = [w for w in order if not speed[w] and metric_of[w]]
        md.append("Over the workloads where neither this allocator nor the reference failed; "
                  "`all` counts every workload above, `am_wl` only the `am_wl_*` programs. "
                  "The time ratios count only the workloads whose primary metric is a time or a "
                  "throughput" + (" (not " + ", ".join(f"{w} ({metric_of[w]})" for w in others)
                                  + ", whose ratios are in the table above)" if others else "") + ".\n")
        md.append("| allocator | time ratio (all) | time ratio (am_wl) | peak RSS ratio (all) | "
                  "peak RSS ratio (am_wl) | workloads counted (time / RSS) | FAIL cells |")
        md.append("|---|---:|---:|---:|---:|---:|---:|")
        geo = {}
        for a in allocs:
            gs = [(w, agg[(w, a)]) for w in order if (w, a) in agg]
            geo[a] = dict(
                time_ratio=geomean([g["time_ratio"] for w, g in gs if speed[w]]),
                time_ratio_wl=geomean([g["time_ratio"] for w, g in gs if speed[w] and kinds[w] == "wl"]),
                rss_ratio=geomean([g["rss_ratio"] for w, g in gs]),
                rss_ratio_wl=geomean([g["rss_ratio"] for w, g in gs if kinds[w] == "wl"]),
                counted_time=sum(1 for w, g in gs if speed[w] and g["time_ratio"] is not None),
                counted_rss=sum(1 for w, g in gs if g["rss_ratio"] is not None),
                fail_cells=sum(1 for w, g in gs if g["failed"]))
            e = geo[a]
            md.append(f"| {a} | {f3(e['time_ratio'])} | {f3(e['time_ratio_wl'])} | {f3(e['rss_ratio'])} | "
                      f"{f3(e['rss_ratio_wl'])} | {e['counted_time']} / {e['counted_rss']} of {len(gs)} | "
                      f"{'**' + str(e['fail_cells']) + '**' if e['fail_cells'] else 0} |")
        md.append("")

        rivals = [a for a in ("mimalloc", "jemalloc", "tcmalloc") if a in allocs]
        if "amalloc" in allocs and rivals:
            md.append("## amalloc against the fastest of " + ", ".join(rivals) + " (target: within 5%)\n")
            md.append("| workload | fastest | its median | amalloc | amalloc / fastest (time-like) | within 5% |")
            md.append("|---|---|---:|---:|---:|---|")
            ok_count, rows = 0, 0
            for w in order:
                if not speed[w]:
                    continue
                am = agg.get((w, "amalloc"))
                cands = [(agg[(w, a)]["time_ratio"], a) for a in rivals
                         if (w, a) in agg and agg[(w, a)]["time_ratio"]]
                if not cands or not am:
                    continue
                best, who = min(cands)
                if am["failed"] or not am["time_ratio"]:
                    md.append(f"| {w} | {who} | {num(agg[(w, who)]['median'])} | **FAIL** | - | no |")
                    rows += 1
                    continue
                q = am["time_ratio"] / best
                rows += 1
                ok_count += q <= 1.05
                md.append(f"| {w} | {who} | {num(agg[(w, who)]['median'])} | {num(am['median'])} | "
                          f"{q:.3f} | {'yes' if q <= 1.05 else 'no'} |")
            md.append(f"\namalloc is within 5% of the fastest (or faster) on {ok_count} of {rows} workloads.\n")

        # Latency percentiles.
        lat = {}
        for w in order:
            for a in allocs:
                ls = [r["ambench"]["latency_ns"] for r in runs
                      if r["workload"] == w and r["allocator"] == a and r["ok"]
                      and isinstance((r.get("ambench") or {}).get("latency_ns"), dict)]
                ls = [x for x in ls if all(is_num(x.get(k)) for k, _ in PCTS)]
                if ls:
                    lat[(w, a)] = {k: statistics.median(x[k] for x in ls) for k, _ in PCTS}
        lat_wls = [w for w in order if any((w, a) in lat for a in allocs)]
        if lat_wls:
            md.append("## Latency percentiles (ns, median over the runs: p50 / p99 / p99.9)\n")
            md.append("| workload | " + " | ".join(allocs) + " |")
            md.append("|---|" + "---:|" * len(allocs))
            for w in lat_wls:
                cells = []
                for a in allocs:
                    if (w, a) in fails:
                        cells.append("**FAIL**")
                    elif (w, a) in lat:
                        cells.append(" / ".join(num(lat[(w, a)][k]) for k, _ in PCTS))
                    else:
                        cells.append("-")
                md.append(f"| {w} | " + " | ".join(cells) + " |")
            md.append("")

        spread = [(w, a, (g["max"] - g["min"]) / g["median"]) for (w, a), g in agg.items()
                  if g["ok"] > 1 and g["median"]]
        if spread:
            noisy = [s for s in spread if s[2] > 0.10]
            worst = max(spread, key=lambda s: s[2])
            md.append(f"Noise: {len(noisy)} of {len(spread)} medians have a spread (max - min) / median above "
                      f"10% (worst: {worst[0]} under {worst[1]}, {worst[2] * 100:.0f}%); every run is in "
                      "compare.json.\n")
    else:
        lat, lat_wls, geo = {}, [], {}

    frames_md, frames = frames_section(order_all, kinds, agg, allocs, runs)
    md += frames_md

    cg = os.path.join(raw, "instructions.md")
    if os.path.exists(cg) and os.path.getsize(cg) > 0:
        md.append("## Instructions per malloc+free pair (callgrind)\n")
        with open(cg) as f:
            md.append(f.read().rstrip() + "\n")

    # ---- charts ----
    charts = []
    gnuplot = shutil.which("gnuplot")
    scripts = []
    if order:
        scripts.append(("compare-time.png", ratio_chart(
            os.path.join(out, "compare-time.png"), raw, "compare-time",
            f"Time ratio to {ref} per workload (throughputs: {ref}'s / this one); below 1 = faster; log scale",
            f"time ratio to {ref}", [w for w in order if speed[w]], kinds, allocs, ref,
            {k: g["time_ratio"] for k, g in agg.items()}, fails)))
        scripts.append(("compare-rss.png", ratio_chart(
            os.path.join(out, "compare-rss.png"), raw, "compare-rss",
            f"Peak RSS ratio to {ref} per workload; below 1 = less memory than {ref}; log scale",
            f"peak RSS / {ref}'s peak RSS", order, kinds, allocs, ref,
            {k: g["rss_ratio"] for k, g in agg.items()}, fails)))
    series_wls = []
    for w in order:
        picked = {}
        for a in allocs:
            ok = [r for r in runs if r["workload"] == w and r["allocator"] == a and r["ok"]
                  and isinstance((r.get("ambench") or {}).get("series"), dict)
                  and r["ambench"]["series"].get("rss_kib")]
            if ok:
                picked[a] = median_run(ok)
        if picked:
            series_wls.append(w)
            scripts.append((f"{w}-rss.png", series_chart(os.path.join(out, f"{w}-rss.png"), raw, w, allocs, picked)))
    scripts.append(("latency.png", latency_chart(os.path.join(out, "latency.png"), raw, lat_wls, allocs, lat, fails)))
    for png, gp in scripts:
        if not gp:
            continue
        if not gnuplot:
            print(f"compare: gnuplot not installed: no {png}", file=sys.stderr)
            continue
        res = subprocess.run([gnuplot, gp], capture_output=True, text=True)
        if res.returncode != 0 or not os.path.exists(os.path.join(out, png)):
            print(f"compare: gnuplot failed on {gp}: {res.stderr.strip()[:400]}", file=sys.stderr)
        else:
            charts.append(png)
    if charts:
        md.append("## Charts\n")
        for png in charts:
            md.append(f"![{png}]({png})")
        md.append("")

    # ---- failures and warnings ----
    failed = [r for r in runs if not r["ok"]]
    if failed:
        md.append(f"## FAILED runs ({len(failed)} of {len(runs)})\n")
        md.append("| workload | allocator | rep | what | last lines of stderr |")
        md.append("|---|---|---:|---|---|")
        for r in failed:
            last = " / ".join((r.get("stderr_tail") or [""])[-2:]).replace("|", "\\|")[:160]
            md.append(f"| {r['workload']} | {r['allocator']} | {r['rep']} | {r['reason']} | {last} |")
        md.append("\nTo repeat one: the `command` of the run in compare.json (stdout and stderr of every run "
                  "are in raw/).\n")
    else:
        md.append("No run failed.\n" if runs else "")
    if warnings:
        md.append("## Protocol warnings (for the authors of the workload programs)\n")
        for w, msgs in warnings.items():
            for m in msgs:
                md.append(f"- {w}: {m}")
        md.append("")

    with open(os.path.join(out, "compare.md"), "w") as f:
        f.write("\n".join(md).rstrip() + "\n")

    # ---- compare.json ----
    cg_rows = []
    cg_csv = os.path.join(out, "instructions.csv")
    if os.path.exists(cg_csv):
        with open(cg_csv) as f:
            cg_rows = list(csv.DictReader(f))
    doc = dict(
        schema=1,
        machine=dict(cpu_model=facts.get("cpu"), nproc=int(nproc) if nproc.isdigit() else nproc,
                     cores_used=int(nproc) if nproc.isdigit() else nproc, mem_gib=int(facts["mem_gib"]) if facts.get("mem_gib", "").isdigit() else None,
                     kernel=facts.get("kernel"), date_utc=facts.get("date"),
                     load_before=facts.get("load_before"), load_after=facts.get("load_after")),
        settings=dict(mode=facts.get("mode"), size=facts.get("size"), reps=int(facts.get("reps", 0)),
                      timeout_s=int(facts.get("timeout_s", 0)), long_run_s=float(facts.get("long_s", 0)),
                      single_rep_workloads=sorted(shortened), command=facts.get("command"),
                      build_ok=facts.get("build_ok") == "1", build_dir=facts.get("build_dir"),
                      amalloc_git=facts.get("amalloc_git"), reference=ref,
                      google_benchmark_min_time_s=facts.get("min_time"), am_workload_scale=facts.get("scale"),
                      callgrind_sizes=facts.get("cg_sizes")),
        timing=dict(runs_s=int(facts.get("runs_s", 0)), callgrind_s=int(facts.get("callgrind_s", 0)),
                    until_report_s=int(facts.get("elapsed_s", 0))),
        allocators={a: dict(version=facts.get(f"alloc.{a}.version"), lib=facts.get(f"alloc.{a}.lib") or None)
                    for a in allocs},
        workloads=[dict(name=w, kind=kinds[w], metric=metric_of[w], better=better_of[w] or "lower",
                        time_or_throughput=speed[w]) for w in order_all],
        summary=[dict(workload=w, allocator=a, **agg[(w, a)]) for w in order_all for a in allocs
                 if (w, a) in agg],
        geomean=geo,
        frames=frames,
        latency_ns_median={f"{w}/{a}": v for (w, a), v in lat.items()},
        runs=[{k: v for k, v in r.items() if k != "id"} | {"files": "raw/" + r["id"] + ".{out,err,time}"}
              for r in runs],
        callgrind=cg_rows,
        protocol_warnings=warnings,
        charts=charts,
    )
    with open(os.path.join(out, "compare.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    with open(os.path.join(raw, "summary.txt"), "w") as f:
        if failed:
            f.write(f"{len(failed)} of {len(runs)} runs FAILED ({len(fails)} FAIL cells: "
                    + ", ".join(f"{w}/{a}" for w in order_all for a in allocs if (w, a) in fails)
                    + "); see the list of failed runs in compare.md\n")
        elif runs:
            f.write(f"all {len(runs)} runs passed their checks\n")
    return 3 if runs and not any(r["ok"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
