#!/usr/bin/env python3
"""A/B of imreport's queries while live traffic arrives: one data dir loaded once, then for each
variant in alternation (a variant is a server binary and environment), a copy of that data dir
served, `imreport loadgen --live` posting at a fixed rate, and the suite's first pages and
statistics asked meanwhile. Prints client and server (Server-Timing) p50/p99 per figure, the
rate reached, and the server's CPU by thread name.

  bench/.venv/bin/python bench/ab.py --variant base= --variant exp=IMREPORT_EXP_X=1 \\
      [--messages 1000000] [--profile standard] [--rate 130000] [--pairs 2]

--rate 0 asks the same questions with nothing posted meanwhile (the suite's idle figures).

A variant is NAME=[ENV=VALUE,...][@BINARY]. With --load-each every variant loads a data dir of
its own (with its binary: for a change of the data dir's format). Experiments only: the suite
(bench.py) is what BENCHMARKS.md reports."""

import argparse
import collections
import os
import pathlib
import shutil
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench  # noqa: E402


def threads_cpu(pid):
    """CPU seconds by thread name (numbers stripped, so pools add up)."""
    out = collections.Counter()
    for t in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (t / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")].rstrip("0123456789-_")
        f = stat.rsplit(")", 1)[1].split()
        out[name] += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return out


def parse_variant(s):
    name, _, rest = s.partition("=")
    rest, _, binary = rest.partition("@")
    env = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    return name, env, binary or str(bench.BIN)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", action="append", required=True)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--profile", default="standard")
    ap.add_argument("--rate", type=float, default=130_000)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--scopes", default="app,user,group,chatroom")
    ap.add_argument("--windows", default="1d,7d")
    ap.add_argument("--load-each", action="store_true")
    a = ap.parse_args()
    bench.REPS = a.reps
    variants = [parse_variant(v) for v in a.variant]
    work = pathlib.Path(tempfile.mkdtemp(prefix="imreport-ab-"))
    try:
        w = bench.Workload(a.messages, a.profile)
        w.scopes = {k: v for k, v in w.scopes.items() if k in a.scopes.split(",")}
        w.windows = {k: v for k, v in w.windows.items() if k in a.windows.split(",")}
        def load(name, binary):
            into = work / f"load-{name}"
            into.mkdir()
            bench.BIN = binary
            s = bench.Imreport(w, into)
            try:
                rate = s.load()
                s.settle()
            finally:
                s.close()
            bench.log(f"{name}: loaded {a.messages:,} {a.profile} at {rate:,.0f} messages/s")
            return into / "imreport-data"

        if a.load_each:
            pristine = {name: load(name, binary) for name, _, binary in variants}
        else:
            one = load("all", variants[0][2])
            pristine = {name: one for name, _, _ in variants}
        rows = collections.defaultdict(list)
        for pair in range(a.pairs):
            for name, env, binary in variants:
                data = work / f"run-{name}-{pair}"
                shutil.copytree(pristine[name], data)
                srv = bench.Served(w, data, binary, env)
                try:
                    srv.settle()
                    before = threads_cpu(srv.proc.pid)
                    t = time.perf_counter()
                    if a.rate > 0:
                        r = bench.during_ingest(srv, w, a.rate, live=True)
                    else:
                        # Idle: the suite's own first pages and statistics, nothing posted.
                        r = {"first_page": bench.first_pages(srv, w), "stats": bench.stats_figures(srv, w),
                             "reached": 0}
                    secs = time.perf_counter() - t
                    after = threads_cpu(srv.proc.pid)
                    cpu = {k: (after[k] - before.get(k, 0)) / secs for k in after}
                    rows[name].append((r, cpu))
                    bench.log(f"{name} #{pair}: reached {r['reached']:,.0f}; cpu "
                              + ", ".join(f"{k} {v:.0%}" for k, v in sorted(cpu.items(), key=lambda x: -x[1]) if v > 0.01))
                finally:
                    srv.close()
                    shutil.rmtree(data, ignore_errors=True)
        print(f"{'figure':<22}" + "".join(f"{n:>30}" for n, _, _ in variants))
        figures = list(rows[variants[0][0]][0][0]["first_page"]) + list(rows[variants[0][0]][0][0]["stats"])
        for fig in figures:
            line = f"{fig:<22}"
            for n, _, _ in variants:
                cells = []
                for r, _ in rows[n]:
                    x = r["first_page"].get(fig) or r["stats"][fig]
                    cells.append(f"{x['p50']:.1f}/{x['p99']:.1f}({x.get('server_p99', 0):.1f})")
                line += f"{' '.join(cells):>30}"
            print(line)
        for n, _, _ in variants:
            print(n, "reached", [f"{r['reached']:,.0f}" for r, _ in rows[n]],
                  "cpu total", [f"{sum(c.values()):.0%}" for _, c in rows[n]])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
