#!/usr/bin/env python3
"""imreport's benchmark suite: the same generated traffic loaded into imreport (embedded store,
over HTTP), PostgreSQL 15 and DuckDB, then the same questions asked of all three.
Run through bench/run.sh; writes BENCHMARKS.md (except in smoke mode)."""

import base64

import orjson
import datetime
import gc
import json
import os
import pathlib
import platform
import re
import socket
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(os.environ["IMREPORT_BIN"]) if os.environ.get("IMREPORT_BIN") else ROOT / "target" / "release" / "imreport"
SMOKE = os.environ.get("BENCH_SMOKE") == "1"
# 200: a p99 of 40 samples is their slowest, so one pause of the shared machine decided it.
REPS = 3 if SMOKE else 200
KEY, SECRET = "benchbenchbenchbenchbenc", "benchsecretbenchsecret00"
HOUR, DAY, SH = 3_600_000, 86_400_000, 8 * 3_600_000  # Asia/Shanghai: UTC+8
SETTLE_IDLE_S = 1 if SMOKE else 8  # longer than the embedded store waits before its upkeep (5 s)
WALK_BUDGET_S = 5 if SMOKE else 30  # a walk stops after this long; the rate is what it reached
PG_ADMIN = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
CITUS = os.environ.get("BENCH_CITUS", "postgresql://postgres@127.0.0.1:9700/imreport")
CLASS_SQL = "CASE msg_type WHEN 'text' THEN 0 WHEN 'image' THEN 1 WHEN 'voice' THEN 2 ELSE 3 END"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def pctl(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def timed(fn, reps=REPS, budget_s=8.0, label="", server=None):
    """Median and p99 of `reps` runs after a warm-up; fewer (at least 5) for a slow system, so
    that one figure takes at most about `budget_s`. The client's garbage collector is paused
    while sampling, as Python's `timeit` does: one of its full passes took 7-8 ms here, and a p99
    of a few hundred samples would charge it to the system measured. Samples far above the median are logged,
    with when they ran. `server`, when given, returns the server's own time for the last request
    (its Server-Timing header), kept beside each sample."""
    fn()  # warm
    gc.collect()
    gc.disable()
    ts, started, at, own = [], time.perf_counter(), [], []
    try:
        for i in range(reps):
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1000)
            at.append(t)
            if server and (ms := server()) is not None:
                own.append(ms)
            if i >= 4 and time.perf_counter() - started > budget_s:
                break
    finally:
        gc.enable()
    med = statistics.median(ts)
    for i, (ms, t) in enumerate(zip(ts, at)):
        if ms > 3 * med and ms > 2:
            log(f"   slow sample {label} #{i}: {ms:.1f} ms (median {med:.1f}; at +{t - T0:.1f} s)")
    r = {"p50": med, "p99": pctl(ts, 99), "runs": len(ts)}
    if KEEP_SAMPLES:
        r.update(samples=ts, server_samples=own)
    if own:
        r.update(server_p50=statistics.median(own), server_p99=pctl(own, 99))
    return r


T0 = time.perf_counter()
# Whether `timed` returns its samples too (to pool several servers' rounds: run_scale).
KEEP_SAMPLES = False


def sh(ms):
    return datetime.datetime.fromtimestamp((ms + SH) / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


# Traffic profiles (`imreport loadgen --profile`): standard; full (every field JMessage exports,
# ~450 bytes a message); sparse (50,000 groups and 5,000 chatrooms, activity spread thin).
# BENCH_PROFILES=standard (comma-separated) runs only those.
# The smoke run checks the plumbing: `full` takes the standard path plus the extra columns and
# `sparse` its own scope choices, so `standard` adds nothing there (and CI keeps its time).
PROFILES = [x for x in os.environ.get("BENCH_PROFILES", "full,sparse" if SMOKE else "standard,full,sparse")
            .split(",") if x]

# The full profile's other exported columns, in the order loadgen writes them to CSV.
FULL_COLS = ["target_name", "from_name", "target_appkey", "from_appkey", "create_time", "version", "msg_level",
             "set_from_name"]
FULL_TYPES = {"target_name": "text", "from_name": "text", "target_appkey": "text", "from_appkey": "text",
              "create_time": "bigint", "version": "int", "msg_level": "int", "set_from_name": "int"}


class Workload:
    """The data set and the questions, in instants."""

    def __init__(self, n, profile="standard", days=7, end=None):
        self.n = n
        self.profile = profile
        self.days = days
        now = int(time.time() * 1000)
        # The last ms of the previous civil hour, unless given (to ask two loads the same windows).
        self.end = (now + SH) // HOUR * HOUR - SH - 1 if end is None else end
        self.end_str = sh(self.end)
        last_day = (self.end + SH) // DAY
        self.day0 = last_day - 59
        self.windows = {"1h": (self.end - HOUR + 1, self.end), "1d": (self.end - DAY + 1, self.end),
                        # The API takes whole seconds: the SQL columns ask from the same first ms.
                        "7d": (self.end - 7 * DAY + 1, self.end)}
        # The busiest group and chatroom; in the sparse profile, ones with a small share (rank
        # 1000 of 50,000 groups, 100 of 5,000 chatrooms: tens of messages a week at 1M).
        self.scopes = {"app": None, "user": "u0", "group": "10000000", "chatroom": "20000000"}
        if profile == "sparse":
            self.scopes.update(group="10001000", chatroom="20000100")
        self.last_day = last_day
        d = datetime.date(1970, 1, 1) + datetime.timedelta(days=last_day)
        pm = (d.replace(day=1) - datetime.timedelta(days=1)).replace(day=1)
        self.month0 = pm
        nm = (d.replace(day=28) + datetime.timedelta(days=4)).replace(day=1)
        self.months = [(pm - datetime.date(1970, 1, 1)).days, (d.replace(day=1) - datetime.date(1970, 1, 1)).days,
                       (nm - datetime.date(1970, 1, 1)).days]

    def loadgen_args(self):
        return ["--seed", "1", "--messages", str(self.n), "--days", str(self.days), "--end", self.end_str, "--quiet",
                "--profile", self.profile]


# ---------------------------------------------------------------- imreport

class Http:
    """A minimal HTTP/1.1 GET client over one keep-alive socket. `http.client` parses each
    response's headers in Python, ~0.15 ms a request on this machine: more than imreport takes to
    answer a statistics request, and more than the C drivers the other columns use add."""

    def __init__(self, host, auth):
        h, p = host.rsplit(":", 1)
        self.sock = socket.create_connection((h, int(p)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.head = f"Host: {host}\r\nAuthorization: {auth}\r\n\r\n".encode()

    def get(self, path):
        self.sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\n" + self.head)
        buf = b""
        while (end := buf.find(b"\r\n\r\n")) < 0:
            buf += self._recv()
        head, body = buf[:end].split(b"\r\n"), buf[end + 4:]
        status = int(head[0].split()[1])
        fields = dict(line.split(b":", 1) for line in head[1:])
        fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
        # imreport's own time for the request (`Server-Timing: app;dur=<ms>`).
        timing = fields.get(b"server-timing", b"")
        self.server_ms = float(timing.split(b"dur=", 1)[1]) if b"dur=" in timing else None
        if b"content-length" not in fields:
            raise RuntimeError(f"{path}: no Content-Length in {head}")
        n = int(fields[b"content-length"])
        chunks = [body]
        have = len(body)
        while have < n:
            c = self._recv()
            chunks.append(c)
            have += len(c)
        return status, b"".join(chunks)

    def _recv(self):
        c = self.sock.recv(1 << 20)
        if not c:
            raise ConnectionError("the server closed the connection")
        return c

    def close(self):
        self.sock.close()


class Imreport:
    name = "imreport"
    store = []  # extra flags choosing the store: none for the embedded default

    def __init__(self, w, work):
        self.w, self.dir = w, work / "imreport-data"
        self.prepare()
        subprocess.run([BIN, "app", "create", "--data-dir", self.dir, *self.store, "--app-key", KEY,
                        "--master-secret", SECRET], check=True, capture_output=True)
        self.start()

    def start(self, binary=None, env=None):
        """Starts `binary` (BIN by default) serving the data dir, with `env` added."""
        self.proc = subprocess.Popen([binary or BIN, "serve", "--data-dir", self.dir, *self.store, "--listen",
                                      "127.0.0.1:0", "--queue-depth", "1024", "--ingest-concurrency", "8"],
                                     stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
                                     # BENCH_SERVER_LOG=FILE keeps the server's log (with
                                     # its access log: one line per request with its latency).
                                     stderr=open(os.environ["BENCH_SERVER_LOG"], "a")
                                     if os.environ.get("BENCH_SERVER_LOG") else subprocess.DEVNULL)
        self.url = self.proc.stdout.readline().strip().rsplit(" ", 1)[1]
        self.host = urllib.parse.urlparse(self.url).netloc
        self.auth = "Basic " + base64.b64encode(f"{KEY}:{SECRET}".encode()).decode()
        self.conn = Http(self.host, self.auth)

    def load(self):
        t = time.perf_counter()
        out = subprocess.run([BIN, "loadgen", *self.w.loadgen_args(), "--url", self.url, "--app-key", KEY,
                              "--master-secret", SECRET, "--concurrency", "4", "--batch", "5000"],
                             check=True, capture_output=True, text=True)
        secs = time.perf_counter() - t
        log(out.stderr.strip())
        return self.w.n / secs

    def prepare(self):
        pass

    def settle(self):
        """Waits for the work an LSM store defers past a load (sealing memtables once ingest goes
        quiet, merging each finished day partition) to finish, so that reads and disk are measured
        on the store as it stays, not mid-merge; returns how long that work ran after the load.
        Finished: the process used under 2% of a core for SETTLE_IDLE_S in a row (longer than the
        store waits before it starts that work)."""
        def cpu():
            f = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        start = last_busy = time.perf_counter()
        prev = cpu()
        while time.perf_counter() - last_busy < SETTLE_IDLE_S and time.perf_counter() - start < 600:
            time.sleep(0.5)
            now = cpu()
            if now - prev > 0.01:
                last_busy = time.perf_counter()
            prev = now
        return last_busy - start

    def get(self, path):
        try:
            status, body = self.conn.get(path)
        except OSError:
            # The server closes keep-alive connections idle for longer than its header timeout
            # (10 s), e.g. while `imreport export` walks; open a new one.
            self.conn.close()
            self.conn = Http(self.host, self.auth)
            status, body = self.conn.get(path)
        if status != 200:
            raise RuntimeError(f"{path}: {status} {body[:200]}")
        return orjson.loads(body)

    def _path(self, scope, sid):
        return {"app": "/v2/messages", "user": f"/v2/users/{sid}/messages", "group": f"/v2/groups/{sid}/messages",
                "chatroom": f"/v2/chatrooms/{sid}/messages"}[scope]

    def server_ms(self):
        return self.conn.server_ms

    def first_page(self, scope, sid, b, e):
        q = urllib.parse.urlencode({"count": 1000, "begin_time": sh(b), "end_time": sh(e)})
        page = self.get(f"{self._path(scope, sid)}?{q}")
        return page["total"]

    def walk(self, b, e, deadline):
        # `imreport export` is the client: a Rust walker that copies messages through as sent and
        # fetches the next page while it parses the last, so the figure is the server's rate
        # rather than a Python decoder's.
        out = subprocess.run([BIN, "export", "--url", self.url, "--app-key", KEY, "--master-secret", SECRET,
                              "--begin", sh(b), "--end", sh(e), "--count", "1000", "--out", "/dev/null"],
                             check=True, capture_output=True, text=True)
        return json.loads(out.stderr.strip().splitlines()[-1])["messages"]

    def stats(self, kind, unit, start, n):
        self.get(f"/v2/statistic/{kind}?time_unit={unit}&start={urllib.parse.quote(start)}&duration={n}")

    def disk(self):
        # Bytes allocated on disk (what `du` shows): fjall sizes each new journal file to its
        # full length up front, sparse, so the apparent size would count space never written.
        return sum(f.stat().st_blocks * 512 for f in self.dir.rglob("*") if f.is_file())

    def rss_peak(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def close(self):
        self.proc.terminate()
        self.proc.wait()


class Served(Imreport):
    """A server on an existing data dir (no app created): `binary` with `env` added."""

    def __init__(self, w, data, binary=None, env=None):
        self.w, self.dir = w, data
        self.start(binary, env)


class ImreportPg(Imreport):
    """imreport's PostgreSQL backend (what stateless replicas share), on the same PostgreSQL server
    as the raw-PostgreSQL column. Its RSS is the imreport process only."""
    name = "imreport on PostgreSQL"
    db = "imreport_bench_store"
    store = ["--store", PG_ADMIN.rsplit("/", 1)[0] + "/" + db]

    def prepare(self):
        import psycopg
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {self.db}")
            c.execute(f"CREATE DATABASE {self.db}")

    def disk(self):
        import psycopg
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            return c.execute(f"SELECT pg_database_size('{self.db}')").fetchone()[0]

    def dsn(self):
        return PG_ADMIN.rsplit("/", 1)[0] + "/" + self.db

    def settle(self):
        """Waits for the upkeep that counts finished hours (every 10 s; a dirty hour once a pass
        finds it untouched since the one before) to count every hour of the load that it will
        count yet: none dirty, and the app's `folded` mark past the load's last hour (or past
        the last hour that ended 5 minutes ago), and to vacuum every day partition of the
        messages and their index once its inserts stopped (a partition vacuumed since its last
        insert, no vacuum running). Returns how long that took after the load."""
        if SMOKE:
            return None
        import psycopg
        start = time.perf_counter()
        with psycopg.connect(self.dsn(), autocommit=True) as c:
            while time.perf_counter() - start < 600:
                dirty, folded, unvacuumed = c.execute(
                    "SELECT (SELECT count(*) FROM fold_dirty), (SELECT min(folded) FROM app_state),"
                    " (SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = current_schema()"
                    "   AND (relname LIKE 'messages\\_p%' OR relname LIKE 'msg\\_index\\_p%')"
                    "   AND n_ins_since_vacuum > 0)"
                    " + (SELECT count(*) FROM pg_stat_progress_vacuum)").fetchone()
                want = min((int(time.time() * 1000) - 300_000) // HOUR * HOUR, self.w.end + 1)
                if dirty == 0 and folded is not None and folded >= want and unvacuumed == 0:
                    break
                time.sleep(0.5)
        return time.perf_counter() - start

    def close(self):
        super().close()
        import psycopg
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {self.db}")
            quiesce(c)


class ImreportCitus(ImreportPg):
    """imreport's PostgreSQL backend on a Citus cluster (a coordinator and two workers on this
    same machine: `.ci/run` starts one at BENCH_CITUS, default port 9700), in a schema of its
    own; imreport distributes its tables by app itself. Skipped when no cluster answers."""
    name = "imreport on Citus"
    schema = "imreport_bench"
    store = ["--store", CITUS, "--pg-schema", schema]

    @staticmethod
    def available():
        import psycopg
        try:
            with psycopg.connect(CITUS, autocommit=True, connect_timeout=3) as c:
                return c.execute("SELECT count(*) FROM pg_extension WHERE extname = 'citus'").fetchone()[0] == 1
        except psycopg.Error:
            return False

    def dsn(self):
        return CITUS + "?options=-csearch_path%3D" + self.schema

    def prepare(self):
        import psycopg
        with psycopg.connect(CITUS, autocommit=True) as c:
            c.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")

    def disk(self):
        # Every shard on every worker (tables and indexes), through the coordinator.
        import psycopg
        with psycopg.connect(CITUS, autocommit=True) as c:
            return c.execute(
                "SELECT coalesce(sum(citus_total_relation_size(logicalrelid)), 0)::bigint FROM pg_dist_partition p "
                "JOIN pg_class c ON c.oid = p.logicalrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind = 'r'", (self.schema,)).fetchone()[0]

    def close(self):
        Imreport.close(self)
        import psycopg
        with psycopg.connect(CITUS, autocommit=True) as c:
            c.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


def quiesce(c):
    """Leaves the shared PostgreSQL server idle for the next column: without this, the checkpoint
    of a column's load and drop lands minutes later, on two cores, in another system's figures."""
    c.execute("CHECKPOINT")


# ---------------------------------------------------------------- SQL systems

def scope_sql(scope):
    return {"app": "TRUE", "user": "(from_id = %(id)s OR (target_type = 'single' AND target_id = %(id)s))",
            "group": "target_type = 'group' AND target_id = %(id)s",
            "chatroom": "target_type = 'chatroom' AND target_id = %(id)s"}[scope]


class Sql:
    """What PostgreSQL and DuckDB share: the same SQL a competent engineer would write."""

    base_cols = "msgid, msg_ctime, target_type, target_id, from_type, from_id, from_platform, msg_type, msg_body"

    @property
    def cols(self):
        return self.base_cols + ("".join(", " + c for c in FULL_COLS) if self.w.profile == "full" else "")

    def q(self, sql, args=None):
        raise NotImplementedError

    def first_page(self, scope, sid, b, e):
        args = {"b": b, "e": e, "id": sid}
        where = f"app = 1 AND msg_ctime BETWEEN %(b)s AND %(e)s AND {scope_sql(scope)}"
        self.q(f"SELECT {self.cols} FROM messages WHERE {where} ORDER BY msg_ctime, msgid LIMIT 1000", args)
        return self.q(f"SELECT count(*) FROM messages WHERE {where}", args)[0][0]

    def walk(self, b, e, deadline):
        n, pos = 0, (b - 1, 0)
        while time.perf_counter() < deadline:
            rows = self.q(f"SELECT {self.cols} FROM messages WHERE app = 1 AND (msg_ctime, msgid) > (%(c)s, %(m)s) "
                          f"AND msg_ctime <= %(e)s ORDER BY msg_ctime, msgid LIMIT 1000",
                          {"c": pos[0], "m": pos[1], "e": e})
            n += len(rows)
            if len(rows) < 1000:
                return n
            pos = (rows[-1][1], rows[-1][0])
        return n

    def stats(self, kind, unit, start, n):
        w = self.w
        if kind == "messages":
            if unit == "HOUR":
                b = w.last_day * DAY - SH
                e, bucket = b + 24 * HOUR - 1, f"(msg_ctime + {SH}) / {HOUR}"
            elif unit == "DAY":
                b, e, bucket = w.day0 * DAY - SH, (w.last_day + 1) * DAY - SH - 1, f"(msg_ctime + {SH}) / {DAY}"
            else:
                m1 = w.months[1] * DAY - SH
                b, e = w.months[0] * DAY - SH, w.months[2] * DAY - SH - 1
                bucket = f"CASE WHEN msg_ctime < {m1} THEN 0 ELSE 1 END"
            self.q(f"SELECT {bucket} AS b, target_type, {CLASS_SQL} AS c, count(*) FROM messages "
                   f"WHERE app = 1 AND msg_ctime BETWEEN %(b)s AND %(e)s GROUP BY 1, 2, 3", {"b": b, "e": e})
            return
        b, e = w.day0 * DAY - SH, (w.last_day + 1) * DAY - SH - 1
        day = f"(msg_ctime + {SH}) / {DAY}"
        eday = f"(time + {SH}) / {DAY}"
        if kind == "users":
            self.q(f"SELECT {day}, count(DISTINCT from_id) FROM messages WHERE app = 1 AND from_type = 'user' "
                   f"AND msg_ctime BETWEEN %(b)s AND %(e)s GROUP BY 1", {"b": b, "e": e})
            self.q(f"SELECT d, count(DISTINCT u) FROM (SELECT {day} AS d, from_id AS u FROM messages WHERE app = 1 "
                   f"AND from_type = 'user' AND msg_ctime BETWEEN %(b)s AND %(e)s UNION ALL SELECT {eday}, id FROM events "
                   f"WHERE app = 1 AND kind = 'user_login' AND time BETWEEN %(b)s AND %(e)s) t GROUP BY 1", {"b": b, "e": e})
            self.q(f"SELECT {eday} AS d, count(*), sum(count(*)) OVER (ORDER BY {eday}) FROM events WHERE app = 1 "
                   f"AND kind = 'user_registered' AND time <= %(e)s GROUP BY 1", {"e": e})
        else:
            self.q(f"SELECT {day}, count(DISTINCT target_id) FROM messages WHERE app = 1 AND target_type = 'group' "
                   f"AND msg_ctime BETWEEN %(b)s AND %(e)s GROUP BY 1", {"b": b, "e": e})
            self.q(f"SELECT {eday} AS d, count(*), sum(count(*)) OVER (ORDER BY {eday}) FROM events WHERE app = 1 "
                   f"AND kind = 'group_created' AND time <= %(e)s GROUP BY 1", {"e": e})


class Postgres(Sql):
    name = "PostgreSQL 15"

    def __init__(self, w, work):
        import psycopg
        self.w, self.work = w, work
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute("DROP DATABASE IF EXISTS imreport_bench")
            quiesce(c)
            c.execute("CREATE DATABASE imreport_bench")
        self.conn = psycopg.connect(PG_ADMIN.rsplit("/", 1)[0] + "/imreport_bench", autocommit=True)
        lo, hi = (w.end - 8 * DAY) // DAY, w.end // DAY + 1
        ddl = ["CREATE TABLE messages (app int NOT NULL DEFAULT 1, msgid bigint NOT NULL, msg_ctime bigint NOT NULL, "
               "target_type text NOT NULL, target_id text NOT NULL, from_type text NOT NULL, from_id text NOT NULL, "
               "from_platform text NOT NULL, msg_type text NOT NULL, msg_body jsonb NOT NULL, "
               + ("".join(f"{c} {FULL_TYPES[c]} NOT NULL, " for c in FULL_COLS) if w.profile == "full" else "")
               + "PRIMARY KEY (app, msg_ctime, msgid)) PARTITION BY RANGE (msg_ctime)"]
        for d in range(lo, hi + 1):
            ddl.append(f"CREATE TABLE messages_{d} PARTITION OF messages FOR VALUES FROM ({d * DAY}) TO ({(d + 1) * DAY})")
        ddl += ["CREATE INDEX ON messages (app, from_id, msg_ctime, msgid)",
                "CREATE INDEX ON messages (app, target_type, target_id, msg_ctime, msgid)",
                "CREATE TABLE events (app int NOT NULL DEFAULT 1, kind text NOT NULL, id text NOT NULL, time bigint NOT NULL)",
                "CREATE INDEX ON events (app, kind, time)"]
        for s in ddl:
            self.conn.execute(s)

    def load(self, prefix):
        t = time.perf_counter()
        with self.conn.cursor() as cur:
            for table, cols, path in [("messages", self.cols, f"{prefix}.messages.csv"),
                                      ("events", "kind, id, time", f"{prefix}.events.csv")]:
                with cur.copy(f"COPY {table} ({cols}) FROM STDIN (FORMAT csv)") as cp, open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        cp.write(chunk)
        self.conn.execute("ANALYZE")
        return self.w.n / (time.perf_counter() - t)

    def q(self, sql, args=None):
        return self.conn.execute(sql, args).fetchall()

    def disk(self):
        return self.q("SELECT pg_database_size('imreport_bench')")[0][0]

    def rss_peak(self):
        return None

    def close(self):
        self.conn.close()
        import psycopg
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute("DROP DATABASE IF EXISTS imreport_bench")
            quiesce(c)


class Duck(Sql):
    name = "DuckDB"

    def __init__(self, w, work):
        import duckdb
        self.w, self.path = w, work / "bench.duckdb"
        self.conn = duckdb.connect(str(self.path))

    def load(self, prefix):
        t = time.perf_counter()
        duck = {"text": "VARCHAR", "bigint": "BIGINT", "int": "INTEGER"}
        extra = "".join(f",'{c}':'{duck[FULL_TYPES[c]]}'" for c in FULL_COLS) if self.w.profile == "full" else ""
        cols = ("{'msgid':'BIGINT','msg_ctime':'BIGINT','target_type':'VARCHAR','target_id':'VARCHAR',"
                "'from_type':'VARCHAR','from_id':'VARCHAR','from_platform':'VARCHAR','msg_type':'VARCHAR','msg_body':'VARCHAR'"
                + extra + "}")
        self.conn.execute(f"CREATE TABLE messages AS SELECT 1 AS app, * FROM read_csv('{prefix}.messages.csv', "
                          f"header=false, columns={cols}) ORDER BY msg_ctime, msgid")
        self.conn.execute(f"CREATE TABLE events AS SELECT 1 AS app, * FROM read_csv('{prefix}.events.csv', header=false, "
                          f"columns={{'kind':'VARCHAR','id':'VARCHAR','time':'BIGINT'}})")
        self.conn.execute("CHECKPOINT")
        return self.w.n / (time.perf_counter() - t)

    def q(self, sql, args=None):
        # DuckDB takes $name parameters; the shared SQL uses psycopg's %(name)s.
        names = set(re.findall(r"%\((\w+)\)s", sql))
        params = {k: v for k, v in (args or {}).items() if k in names}
        return self.conn.execute(re.sub(r"%\((\w+)\)s", r"$\1", sql), params).fetchall()

    def disk(self):
        return self.path.stat().st_blocks * 512

    def rss_peak(self):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def close(self):
        self.conn.close()


# ---------------------------------------------------------------- the run

def first_pages(sys_, w, tag=""):
    out = {}
    for scope, sid in w.scopes.items():
        for win, (b, e) in w.windows.items():
            totals = set()
            out[f"{scope} {win}"] = timed(lambda: totals.add(sys_.first_page(scope, sid, b, e)),
                                          label=f"{sys_.name}{tag} {scope} {win}",
                                          server=getattr(sys_, "server_ms", None))
            out[f"{scope} {win}"]["total"] = max(totals)
    return out


def stats_figures(sys_, w, tag=""):
    out = {}
    day0 = (datetime.date(1970, 1, 1) + datetime.timedelta(days=w.day0)).isoformat()
    last = (datetime.date(1970, 1, 1) + datetime.timedelta(days=w.last_day)).isoformat()
    for label, args in [("users 60 DAY", ("users", "DAY", day0, 60)), ("groups 60 DAY", ("groups", "DAY", day0, 60)),
                        ("messages 24 HOUR", ("messages", "HOUR", last + " 00", 24)),
                        ("messages 60 DAY", ("messages", "DAY", day0, 60)),
                        ("messages 2 MONTH", ("messages", "MONTH", w.month0.strftime("%Y-%m"), 2))]:
        out[label] = timed(lambda: sys_.stats(*args), label=f"{sys_.name}{tag} {label}",
                           server=getattr(sys_, "server_ms", None))
    return out


# How long the traffic posted during the queries of `during_ingest` lasts, at most.
DURING_S = 5 if SMOKE else 90
# Its clients: enough that the asked rate is reached (each waits for its batch to be durable).
DURING_CLIENTS = 8


def during_ingest(sys_, w, rate, live):
    """First pages and statistics again, while `imreport loadgen` posts more of the same traffic
    (new msgids) at `rate` messages/s in batches of 1000 from 8 clients (with 2, each waiting for
    its batch's fsync, 1M `standard` reached 129k of 153k asked): live (each message
    stamped with the second it is posted in, as a running app's traffic arrives) or a backfill
    (the same 7 days as the load, in time order, as an import of the past)."""
    n = max(int(rate * DURING_S), 1000)
    first = 10**12 if live else 2 * 10**12
    span = ["--live"] if live else ["--days", "7", "--end", w.end_str]
    proc = subprocess.Popen([BIN, "loadgen", "--seed", "3" if live else "2", "--messages", str(n), *span,
                             "--quiet", "--profile", w.profile, "--first-msgid", str(first), "--url", sys_.url,
                             "--app-key", KEY, "--master-secret", SECRET, "--concurrency", str(DURING_CLIENTS), "--batch", "1000",
                             "--rate", f"{rate:.0f}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(min(2, DURING_S / 2))
    tag = " while ingesting" + ("" if live else " (backfill)")
    r = {"rate": rate, "live": live, "first_page": first_pages(sys_, w, tag), "stats": stats_figures(sys_, w, tag)}
    r["ingest_ran_throughout"] = proc.poll() is None
    # Stopped with SIGINT, loadgen lets the batches in flight finish and prints what it posted.
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the ingest during the queries failed ({proc.returncode}): {err.strip()}")
    if not r["ingest_ran_throughout"]:
        log(f"NOTE: the ingest during the queries ended before them: {err.strip()}")
    # The rate it reached over its run (it starts 2 s before the queries and ends with them).
    m = re.search(r"in ([0-9.]+) s: ([0-9]+) messages/s", err)
    r["reached"] = float(m.group(2)) if m else None
    log(f"   while ingesting ({'live' if live else 'backfill'}): asked {rate:,.0f} messages/s, reached "
        + (f"{r['reached']:,.0f}" if m else f"? ({err.strip()[-200:]})"))
    return r


def measure(sys_, w):
    r = {"first_page": first_pages(sys_, w)}
    b, e = w.windows["7d"]
    t = time.perf_counter()
    n = sys_.walk(b, e, t + WALK_BUDGET_S)
    r["walk"] = {"messages": n, "per_sec": n / (time.perf_counter() - t)}
    r["stats"] = stats_figures(sys_, w)
    r["disk_bytes"] = sys_.disk()
    r["bytes_per_message"] = r["disk_bytes"] / w.n
    r["rss_peak"] = sys_.rss_peak()
    return r


def time_to_ready(data_dir):
    """Seconds from starting `imreport serve` on `data_dir` to its first `200` from `/readyz`."""
    t = time.perf_counter()
    proc = subprocess.Popen([BIN, "serve", "--data-dir", data_dir, "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = proc.stdout.readline().strip().rsplit(" ", 1)[1]
        while time.perf_counter() - t < 600:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
                    if r.status == 200:
                        return time.perf_counter() - t
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError("the server was not ready within 600 s")
    finally:
        proc.terminate()
        proc.wait()


# Rounds of the scale run's alternated questions (each: both data dirs served in turn).
SCALE_ROUNDS = 1 if SMOKE else 2


def run_scale(n, days, base):
    """Issue 25's scale run: imreport alone, standard traffic loaded through the API, at `base`
    over 7 days (the suite's usual shape) and at `n` over `days` days; the same questions of each
    (the windows end at the same instant), disk, peak RSS, and the time from start to ready on
    each data dir. Then the first pages and statistics again, each data dir served in turn for
    SCALE_ROUNDS rounds: the two sizes are loaded minutes apart, and this machine's speed drifts
    over minutes (a shared host), so the ratio of the alternated figures compares the same
    minutes of the machine."""
    out, dirs = [], []
    work = pathlib.Path(tempfile.mkdtemp(prefix="imreport-scale-"))
    try:
        end = None
        for size, span in ((base, 7), (n, days)):
            w = Workload(size, "standard", span, end)
            end = w.end  # both sizes' windows end at the same instant
            log(f"== scale: {size:,} messages, standard traffic, {span} days ending {w.end_str} (Asia/Shanghai)")
            into = work / f"{size}"
            into.mkdir()
            s = Imreport(w, into)
            try:
                rate = s.load()
                settle = s.settle()
                log(f"   {rate:,.0f} messages/s; background upkeep ran {settle:.1f} s more; querying")
                # The peak so far is the load's (with its upkeep); measure's is the whole run's.
                loaded = s.rss_peak()
                r = {"ingest_per_sec": rate, "settle_s": settle, "rss_peak_load": loaded, **measure(s, w)}
            finally:
                s.close()
            r["ready_s"] = time_to_ready(s.dir)
            log(f"   ready {r['ready_s']:.2f} s after start on that data dir")
            r["totals"] = {k: v["total"] for k, v in r["first_page"].items()}
            out.append({"messages": size, "days": span, "results": r})
            dirs.append((w, s.dir))
        global KEEP_SAMPLES
        pooled = [{} for _ in dirs]
        KEEP_SAMPLES = True
        try:
            for rnd in range(SCALE_ROUNDS):
                for i, (w, data) in enumerate(dirs):
                    log(f"== scale, alternated round {rnd + 1} of {SCALE_ROUNDS}: {w.n:,} messages")
                    srv = Served(w, data)
                    try:
                        srv.settle()
                        tag = f" {w.n:,} alternated #{rnd}"
                        for k, v in {**first_pages(srv, w, tag), **stats_figures(srv, w, tag)}.items():
                            got = pooled[i].setdefault(k, ([], []))
                            got[0].extend(v["samples"])
                            got[1].extend(v["server_samples"])
                    finally:
                        srv.close()
        finally:
            KEEP_SAMPLES = False
        for run, got in zip(out, pooled):
            run["results"]["alternated"] = {
                k: {"p50": statistics.median(c), "p99": pctl(c, 99), "runs": len(c),
                    "server_p50": statistics.median(sv), "server_p99": pctl(sv, 99)}
                for k, (c, sv) in got.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"date": datetime.date.today().isoformat(), "command": f"bench/run.sh --scale {n} {days} {base}",
            "runs": out}


def scale_report():
    """BENCHMARKS.md's section for the last scale run (bench/results-scale.json), if any."""
    path = ROOT / "bench" / "results-scale.json"
    if not path.exists():
        return []
    saved = json.loads(path.read_text())
    (small, large) = saved["runs"]
    a, b = small["results"], large["results"]
    lines = [f"## Scale: imreport alone at {small['messages']:,} and {large['messages']:,} messages", "",
             f"`{saved['command']}` on {saved['date']}: standard traffic loaded through the API ({small['messages']:,} "
             f"over {small['days']} days, {large['messages']:,} over {large['days']} days, each into a new data dir), "
             "the same questions of each, then the time from starting `imreport serve` on that data dir to its first "
             "`200` from `/readyz`. The rows headed *alternated* ask the first pages and statistics again after both loads, "
             "on a server started on each data dir in turn, for two rounds each (samples pooled): the two loads finish "
             "minutes apart and this shared machine's speed drifts over minutes, so these ratios compare the same "
             "minutes. Issue 25's targets at the larger size: first page and statistics p99 within 1.5× "
             "of the smaller, peak RSS ≤ 300 MB, ready within 5 s.", "",
             f"| figure | {small['messages']:,} | {large['messages']:,} | larger ÷ smaller |", "|---|---|---|---|"]

    def row(label, x, y):
        ratio = f"{y / x:.2f}×" if isinstance(x, (int, float)) and x else ""
        cell = lambda v: fmt_ms(v) if isinstance(v, float) and v < 100 else f"{v:,.0f}"
        lines.append(f"| {label} | {cell(x)} | {cell(y)} | {ratio} |")
    row("ingest, durable (messages/s)", a["ingest_per_sec"], b["ingest_per_sec"])
    row("background upkeep after the load (s)", a["settle_s"], b["settle_s"])
    for k in a["first_page"]:
        row(f"first page {k} (p99, ms)", a["first_page"][k]["p99"], b["first_page"][k]["p99"])
    row("full 7-day walk, 1000 a page (messages/s)", a["walk"]["per_sec"], b["walk"]["per_sec"])
    for k in a["stats"]:
        row(f"statistics {k} (p99, ms)", a["stats"][k]["p99"], b["stats"][k]["p99"])
    row("disk (bytes/message)", a["bytes_per_message"], b["bytes_per_message"])
    if "rss_peak_load" in a:
        row("peak RSS of the load and its upkeep (MB)", a["rss_peak_load"] / 1e6, b["rss_peak_load"] / 1e6)
    row("peak RSS (MB)", a["rss_peak"] / 1e6, b["rss_peak"] / 1e6)
    row("start to ready (s)", a["ready_s"], b["ready_s"])
    if "alternated" in a:
        # The same questions again, each data dir served in turn (run_scale): the same minutes
        # of the machine for both sizes.
        for k in a["alternated"]:
            kind = "statistics" if k in a["stats"] else "first page"
            row(f"alternated: {kind} {k} (p99, ms)", a["alternated"][k]["p99"], b["alternated"][k]["p99"])
    lines += ["", f"`total` of each first page at {large['messages']:,}: "
              + ", ".join(f"{k} {v:,}" for k, v in b["totals"].items()), ""]
    return lines


def run_size(n, profile, work):
    w = Workload(n, profile)
    log(f"== {n:,} messages, {profile} traffic, 7 days ending {w.end_str} (Asia/Shanghai)")
    prefix = work / "data"
    t = time.perf_counter()
    subprocess.run([BIN, "loadgen", *w.loadgen_args(), "--format", "csv", "--out", prefix], check=True)
    log(f"generated CSV in {time.perf_counter() - t:.1f} s")
    results = {}
    # BENCH_SYSTEMS=imreport (comma-separated names) measures only those, for quick iteration;
    # such a run still writes only the log, never BENCHMARKS.md.
    only = [x for x in os.environ.get("BENCH_SYSTEMS", "").split(",") if x]
    for cls in (Imreport, ImreportPg, ImreportCitus, Postgres, Duck):
        if only and cls.name not in only:
            continue
        if cls is ImreportCitus and not cls.available():
            log(f"-- {cls.name}: no Citus cluster at {CITUS}; skipped")
            continue
        s = cls(w, work)
        try:
            log(f"-- {s.name}: loading")
            rate = s.load() if isinstance(s, Imreport) else s.load(prefix)
            settle = s.settle() if isinstance(s, Imreport) else None
            log(f"   {rate:,.0f} messages/s" + (f"; background upkeep ran {settle:.1f} s more" if settle is not None else "")
                + "; querying")
            results[s.name] = {"ingest_per_sec": rate, "settle_s": settle, **measure(s, w)}
            if cls is Imreport:
                # Queries while ingest runs at half the rate just measured: live traffic (the
                # targets' case), then a backfill of the loaded week (harder: see LIMITS).
                results[s.name]["during_ingest"] = during_ingest(s, w, rate / 2, live=True)
                results[s.name]["during_backfill"] = during_ingest(s, w, rate / 2, live=False)
        finally:
            s.close()
    for name, r in results.items():
        t = {k: v["total"] for k, v in r["first_page"].items()}
        results[name]["totals"] = t
    # Every system's totals against imreport's (or, in a partial run, the first system's).
    base = results.get("imreport", next(iter(results.values())))["totals"]
    for name, r in results.items():
        if r["totals"] != base:
            log(f"WARNING: {name} totals differ from imreport's: {r['totals']} vs {base}")
    return w, results


def fmt_ms(x):
    return f"{x:.2f}" if x < 10 else f"{x:.0f}"


def report(runs, cmd, date=None):
    imr = "imreport"
    date = date or datetime.date.today().isoformat()
    lines = ["# Benchmarks", "",
             "Written by `bench/run.sh` (this file is generated; edit `bench/bench.py`). The same generated traffic "
             "(`imreport loadgen --seed 1`, 7 days, Zipf users and groups, 80% text; in three profiles: `standard`, "
             "`full` with every field JMessage exports and realistic media bodies, ~450 bytes a message, and `sparse` "
             "with 50,000 groups and 5,000 chatrooms whose activity is spread thin, its group and chatroom figures "
             "asked of one with a small share) is loaded into imreport (embedded "
             "store, over HTTP), imreport on its PostgreSQL backend (over HTTP; the same PostgreSQL server as the next "
             "column, default settings), imreport on Citus (over HTTP; a coordinator and two workers on the same machine, "
             "two shards per table, when a cluster answers at BENCH_CITUS), PostgreSQL 15 (day partitions, an index per scope, COPY, keyset SQL, `count(*)`, "
             "`GROUP BY`) and DuckDB (sorted table, same SQL), and the same questions are asked of each.", "",
             f"- Machine: {os.cpu_count()} cores, {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, "
             f"{platform.platform()}", f"- Command: `{cmd}`", f"- Date: {date}",
             f"- Latencies: median and p99 of {REPS} runs after one warm-up (fewer, at least 5, where one figure would "
             "take over 8 s), measured by a Python client on the same machine: HTTP with keep-alive (a minimal client on one "
             "socket) and orjson for imreport, psycopg 3 and the duckdb module for the others, with the client's garbage collector paused "
             "while sampling (as Python's `timeit` does). Each figure includes the client's decoding "
             "of the answer (1000 messages for a first page); imreport's own time for the same requests (its "
             "`Server-Timing` header) has a table of its own under each run's.",
             f"- Full walk: pages of 1000 through the whole 7-day window; for imreport with `imreport export` (a Rust "
             f"client that fetches the next page while it parses and writes the last), for the others with keyset SQL from Python, for at "
             f"most {WALK_BUDGET_S} s.",
             "- Order: each system loads, then (imreport only) the suite waits until the process has been idle for "
             f"{SETTLE_IDLE_S} s, so that the upkeep the embedded store defers past a load (sealing memtables, merging "
             "each finished day partition) is done (on PostgreSQL and Citus: until the upkeep has counted the load's "
             "finished hours and vacuumed its day partitions); how long that upkeep ran is its own row. Then the queries, the "
             "walk, the statistics, and disk and memory; for the embedded store, the first pages and statistics once more "
             "while `imreport loadgen` posts at half the load's rate, from 8 clients: live traffic (each message stamped "
             "with the second it is posted in, as a running app's arrive), then a backfill of the loaded week (an import "
             "of the past; the writer cannot take it at that rate, so it runs as fast as it is answered), each with the "
             "rate it reached. After each PostgreSQL-backed column its database is dropped "
             "and PostgreSQL checkpointed, so that its deferred writes do not land in the next column's figures.",
             "- Disk: bytes allocated on disk at the end of the run (`du`, for imreport's data dir and DuckDB's file), "
             "`pg_database_size` for PostgreSQL.",
             "- Ratios: how many times better imreport is (higher is better for imreport; below 1× it is worse).", ""]
    for w, res in runs:
        names = list(res)
        lines += [f"## {w.n:,} messages, {getattr(w, 'profile', 'standard')} traffic", "",
                  "| figure | " + " | ".join(names) + " | " + " | ".join(f"imreport vs {n}" for n in names[1:]) + " |",
                  "|---|" + "---|" * (2 * len(names) - 1)]

        def row(label, vals, better_high, unit=""):
            cells = [f"{v:,.0f}{unit}" if isinstance(v, (int, float)) and v >= 100 else (f"{v:.2f}{unit}" if isinstance(v, float) else str(v)) for v in vals]
            ratios = []
            for other in vals[1:]:
                if not isinstance(other, (int, float)) or not other or not vals[0]:
                    ratios.append("")
                else:
                    ratio = vals[0] / other if better_high else other / vals[0]
                    ratios.append(f"{ratio:.1f}×")
            lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")

        row("ingest, durable (messages/s)", [res[n]["ingest_per_sec"] for n in names], True)
        row("background upkeep after the load (s)", [res[n].get("settle_s") if res[n].get("settle_s") is not None
                                                     else "n/a" for n in names], False)
        for k in res[imr]["first_page"]:
            for p in ("p50", "p99"):
                row(f"first page {k} ({p}, ms)", [res[n]["first_page"][k][p] for n in names], False)
        row("full 7-day walk, 1000 a page (messages/s)", [res[n]["walk"]["per_sec"] for n in names], True)
        for k in res[imr]["stats"]:
            for p in ("p50", "p99"):
                row(f"statistics {k} ({p}, ms)", [res[n]["stats"][k][p] for n in names], False)
        row("disk (bytes/message)", [res[n]["bytes_per_message"] for n in names], False)
        row("peak RSS (MB)", [(res[n]["rss_peak"] or 0) / 1e6 or "n/a" for n in names], False)
        during = [d for d in (res[imr].get("during_ingest"), res[imr].get("during_backfill")) if d]
        for d in during:
            reached = d.get("reached")
            what = ("live traffic (each message stamped with the second it is posted in)" if d.get("live", True)
                    else "a backfill of the loaded week (the same 7 days, in time order)")
            lines += ["", f"imreport while `imreport loadgen` posts {what} at {d['rate']:,.0f} messages/s asked "
                      "(half its measured ingest)" + (f", {reached:,.0f} reached" if reached else "")
                      + f", in batches of 1000 from {DURING_CLIENTS} clients"
                      + ("" if d["ingest_ran_throughout"] else " (the ingest ended before the queries did)") + ":", "",
                      "| figure | p50 (ms) | p99 (ms) |", "|---|---|---|"]
            for k, v in d["first_page"].items():
                lines.append(f"| first page {k} | {fmt_ms(v['p50'])} | {fmt_ms(v['p99'])} |")
            for k, v in d["stats"].items():
                lines.append(f"| statistics {k} | {fmt_ms(v['p50'])} | {fmt_ms(v['p99'])} |")
        if "server_p99" in next(iter(res[imr]["first_page"].values())):
            # What of each imreport figure is the server's own time (its Server-Timing header):
            # the rest is the loopback and the Python client decoding the answer.
            cols = ["idle"] + [("while ingesting live" if d.get("live", True) else "while backfilling")
                               for d in during]
            lines += ["", "imreport's own time for the same requests (its `Server-Timing` header; the figures above "
                      "add the loopback and the Python client decoding the answer), p50 / p99 in ms:", "",
                      "| figure | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
            for kind, label in (("first_page", "first page"), ("stats", "statistics")):
                for k, v in res[imr][kind].items():
                    cells = [v] + [d[kind][k] for d in during]
                    lines.append(f"| {label} {k} | " + " | ".join(
                        f"{fmt_ms(c['server_p50'])} / {fmt_ms(c['server_p99'])}" if "server_p99" in c else "" for c in cells) + " |")
        same = all(res[n].get("totals") == res[imr].get("totals") for n in names)
        lines += ["", f"`total` of each first page ({'identical across systems' if same else 'imreport; the other columns differ, see the note under What limits each figure'}): "
                  + ", ".join(f"{k} {v:,}" for k, v in res[imr]["totals"].items()), ""]
    standard = [r for r in runs if getattr(r[0], "profile", "standard") == "standard"]
    if len(standard) > 1:
        a, b = standard[0][1][imr], standard[-1][1][imr]
        lines += [f"## Growth of imreport from {standard[0][0].n:,} to {standard[-1][0].n:,} messages (standard traffic)", "",
                  "| figure | small | large |", "|---|---|---|"]
        for k in a["first_page"]:
            lines.append(f"| first page {k} p99 (ms) | {fmt_ms(a['first_page'][k]['p99'])} | {fmt_ms(b['first_page'][k]['p99'])} |")
        for k in a["stats"]:
            lines.append(f"| statistics {k} p99 (ms) | {fmt_ms(a['stats'][k]['p99'])} | {fmt_ms(b['stats'][k]['p99'])} |")
        lines.append("")
    lines += scale_report()
    lines += ["## What limits each figure", "", open(ROOT / "bench" / "LIMITS.md").read().strip(), ""]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(lines))
    (ROOT / "bench" / "results.json").write_text(json.dumps(
        [{"messages": w.n, "profile": getattr(w, "profile", "standard"), "date": date,
          "results": r} for w, r in runs], indent=1))


def main():
    if sys.argv[1:2] == ["--report-only"]:
        # Rewrites BENCHMARKS.md from the last run's bench/results.json (after editing LIMITS.md).
        saved = json.loads((ROOT / "bench" / "results.json").read_text())
        runs = [(type("W", (), {"n": r["messages"], "profile": r.get("profile", "standard")}), r["results"])
                for r in saved]
        # Each size ran every profile: the command names each size once.
        # ... and the date those figures were measured, not today's.
        report(runs, "bench/run.sh " + " ".join(str(n) for n in dict.fromkeys(r["messages"] for r in saved)),
               saved[0].get("date"))
        log("wrote BENCHMARKS.md")
        return
    if sys.argv[1:2] == ["--scale"]:
        # bench/run.sh --scale [MESSAGES [DAYS [BASE]]]: issue 25's scale run (imreport alone;
        # 100M over 60 days against 10M over 7 by default), kept in bench/results-scale.json;
        # BENCHMARKS.md is rewritten from the last runs of both.
        args = [int(a) for a in sys.argv[2:]]
        n, days, base = (args + [100_000_000, 60, 10_000_000][len(args):])[:3]
        (ROOT / "bench" / "results-scale.json").write_text(json.dumps(run_scale(n, days, base), indent=1))
        log("wrote bench/results-scale.json")
        if (ROOT / "bench" / "results.json").exists():
            sys.argv[1:] = ["--report-only"]
            main()
        return
    sizes = [int(a) for a in sys.argv[1:]] or [1_000_000]
    runs = []
    for n in sizes:
        for profile in PROFILES:
            work = pathlib.Path(tempfile.mkdtemp(prefix="imreport-bench-"))
            try:
                runs.append(run_size(n, profile, work))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    for w, res in runs:
        log(json.dumps({"messages": w.n, "profile": w.profile, **{k: {"ingest": v["ingest_per_sec"], "walk": v["walk"]["per_sec"],
                                                "bytes": v["bytes_per_message"]} for k, v in res.items()}}))
    if SMOKE:
        log("smoke run: every system loaded and answered; no figures written")
        return
    if os.environ.get("BENCH_SYSTEMS"):
        log(json.dumps([{"messages": w.n, "profile": w.profile, "results": r} for w, r in runs]))
        log("partial run (BENCH_SYSTEMS): BENCHMARKS.md left as it was")
        return
    report(runs, "bench/run.sh " + " ".join(sys.argv[1:]))
    log("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
