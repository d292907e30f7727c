#!/usr/bin/env python3
"""Where a load's memory goes: loads MESSAGES over DAYS days into a new data dir through the API
(the suite's load: seed 1, 4 clients, batches of 5000) while sampling the server's RSS and the
embedded store's memory gauges (memtables, pending flushes, block cache) every 0.5 s. Prints
the rate, the peak (VmHWM) and the sample at the highest RSS; the samples go to OUT.

  bench/.venv/bin/python bench/rss.py [--binary target/release/imreport] [--messages 100000000]
      [--days 60] [--out rss.json] [--keep DIR] [ENV=VALUE ...]

--keep DIR keeps the loaded data dir at DIR (for profiling queries on it) instead of deleting it.

Experiments only: the suite (bench.py --scale) is what BENCHMARKS.md reports."""

import argparse
import json
import os
import pathlib
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(bench.BIN))
    ap.add_argument("--messages", type=int, default=100_000_000)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--out", default="rss.json")
    ap.add_argument("--keep", help="move the loaded data dir here instead of deleting it")
    ap.add_argument("env", nargs="*", help="ENV=VALUE for the server")
    a = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        mport = s.getsockname()[1]
    # The suite's own server start and load (bench.Imreport), with the metrics listener on.
    os.environ.update(dict(kv.split("=", 1) for kv in a.env), IMREPORT_METRICS_LISTEN=f"127.0.0.1:{mport}")
    bench.BIN = pathlib.Path(a.binary)
    work = pathlib.Path(tempfile.mkdtemp(prefix="imreport-rss-"))
    try:
        w = bench.Workload(a.messages, days=a.days)
        srv = bench.Imreport(w, work)
        samples, done = [], threading.Event()

        def gauges():
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=2).read().decode()
            except OSError:
                return {}
            return {k.removeprefix("imreport_store_"): float(v) for k, v in
                    (line.rsplit(" ", 1) for line in body.splitlines() if line.startswith("imreport_store_"))}

        def rss():
            for line in open(f"/proc/{srv.proc.pid}/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024

        def sample():
            t0 = time.time()
            while not done.wait(0.5):
                samples.append({"t": round(time.time() - t0, 1), "rss": rss(), **gauges()})

        th = threading.Thread(target=sample)
        th.start()
        rate = srv.load()
        time.sleep(10)  # the upkeep after a load
        done.set()
        th.join()
        hwm = srv.rss_peak()
        srv.close()
        mib = 2**20
        top = max(samples, key=lambda x: x["rss"])
        res = {"messages_per_s": round(rate), "peak_rss_mib": round(hwm / mib, 1),
               "at_highest_sample_mib": {k: round(v / mib, 1) for k, v in top.items()
                                         if k in ("rss", "memtable_bytes", "block_cache_bytes")},
               "pending_flushes_then": top.get("pending_flushes")}
        json.dump({"result": res, "samples": samples}, open(a.out, "w"))
        print(json.dumps(res))
        if a.keep:
            shutil.move(str(srv.dir), a.keep)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
