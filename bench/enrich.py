"""Enrichment benchmark: the full cache against the partial cache (`--enrich-cache`), on the
small dimension (`bancos`, ~1.5k rows) and on a generated dimension of 10,000,000 rows with
skewed keys. Run through scripts/bench.sh (`make bench-enrich`; `make bench` runs it after the
main benchmark), which installs what it needs first.

    python bench/enrich.py [--rows 1000000] [--dim-rows 10000000] [--repeat 1] [--with-full-big]

Steps:
- the dimension `bench_dim_<N>` (cnpj CHAR(8) PRIMARY KEY, segmento, nome): generated once in
  MySQL/MariaDB from a digits table (cross joins, any server), kept for later runs;
- two topics of --rows records (1 partition, lz4, app produce): the generator's records
  (`bancos` keys), and the same records with `CNPJ IF` redrawn from a skewed distribution over
  the big dimension (rank r with probability ~ 1/r, log-uniform; one record in fifty has a key
  the dimension does not have);
- app consume --until-caught-up --close-windows, measured (wall, CPU, peak RSS of the process):
  full and partial on the small dimension (the partial cache is warm after its first batches:
  ~1.5k keys), partial on the big one (default --enrich-cache-bytes, 16 MiB), and with
  --with-full-big the full cache on the big one (gigabytes; off by default).
Reports records/s, peak RSS, and for the partial cache the hit rate, lookups (one per batch
that missed) per second and keys asked, from app's summary. Writes
bench/results/<date>-enrich.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import measure  # noqa: E402
import bench  # noqa: E402

ROOT = bench.ROOT
APP = bench.APP
MYSQL_URL = bench.MYSQL_URL
WORK = ROOT / ".local" / "bench-enrich"
RESULTS = bench.RESULTS
log = bench.log


def sql(statement, *, database=True):
    """Runs SQL with the mariadb/mysql client as the URL's user; returns the output."""
    u = urlparse(MYSQL_URL)
    client = shutil.which("mariadb") or shutil.which("mysql")
    if not client:
        raise SystemExit("bench: no mariadb/mysql client; `make up` installs it")
    cmd = [client, "-h", u.hostname or "127.0.0.1", "-P", str(u.port or 3306),
           "-u", u.username or "reclamacoes", "-N", "-B"]
    if database:
        cmd.append((u.path or "/reclamacoes_db").lstrip("/"))
    cmd += ["-e", statement]
    env = dict(os.environ, MYSQL_PWD=u.password or "")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"bench: SQL failed ({statement[:120]}…): {r.stderr.strip()}")
    return r.stdout


def ensure_dimension(rows):
    """`bench_dim_<rows>`: keys 00000001.. as CHAR(8), generated once (digits cross joins)."""
    table = f"bench_dim_{rows}"
    have = sql(f"SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
               f"AND TABLE_NAME = '{table}'").strip()
    if have == "1" and sql(f"SELECT COUNT(*) FROM {table}").strip() == str(rows):
        log(f"dimension {table}: {rows:,} rows (kept from an earlier run)")
        return table
    digits = len(str(rows - 1))
    log(f"dimension {table}: generating {rows:,} rows (once; a minute or two for 10M)")
    started = dt.datetime.now()
    sql(f"DROP TABLE IF EXISTS {table}; DROP TABLE IF EXISTS bench_digits; "
        "CREATE TABLE bench_digits (d INT PRIMARY KEY); "
        "INSERT INTO bench_digits VALUES (0),(1),(2),(3),(4),(5),(6),(7),(8),(9); "
        f"CREATE TABLE {table} (cnpj CHAR(8) NOT NULL PRIMARY KEY, segmento VARCHAR(4) NOT NULL, "
        "nome VARCHAR(64) NOT NULL) ENGINE=InnoDB")
    # One power of ten per statement keeps each transaction (and the undo log) moderate.
    # The leading digit is the statement's; the others come from the cross joins.
    joins = " ".join(f"CROSS JOIN bench_digits d{i}" for i in range(1, digits - 1))
    n_expr = " + ".join(f"d{i}.d * {10 ** i}" for i in range(1, digits - 1))
    for lead in range(10):
        lo = lead * 10 ** (digits - 1) if digits > 1 else lead
        if lo >= rows:
            break
        number = f"({lo} + d0.d" + (f" + {n_expr}" if n_expr else "") + ")"
        sql(f"INSERT INTO {table} SELECT LPAD({number} + 1, 8, '0'), "
            f"CONCAT('S', {number} % 5 + 1), CONCAT('INSTITUICAO ', {number} + 1) "
            f"FROM bench_digits d0 {joins} WHERE {number} < {rows}")
    sql("DROP TABLE bench_digits")
    log(f"dimension {table}: {sql(f'SELECT COUNT(*) FROM {table}').strip()} rows in "
        f"{(dt.datetime.now() - started).total_seconds():.0f} s")
    return table


def skewed_dataset(src_files, rows, dim_rows, seed=25):
    """The generator's CSV files with `CNPJ IF` (5th column) redrawn: log-uniform over the
    dimension's keys, one in fifty absent."""
    out = WORK / f"skewed-{rows}-{dim_rows}"
    if (out / ".done").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = random.Random(seed)
    for f in src_files:
        with open(f, encoding="latin-1", newline="") as src, \
                open(out / f.name, "w", encoding="latin-1", newline="") as dst:
            dst.write(src.readline())
            for line in src:
                fields = line.split(";")
                if rng.random() < 0.02:
                    key = 90_000_000 + rng.randrange(10_000_000)
                else:
                    key = min(dim_rows, max(1, int(dim_rows ** rng.random())))
                fields[4] = f"{key:08d}"
                dst.write(";".join(fields))
    (out / ".done").write_text("ok\n")
    return out


def consume(run_dir, topic, rows, tag, query, extra):
    outdir = run_dir / f"{tag}-output"
    shutil.rmtree(outdir, ignore_errors=True)
    out, err = run_dir / f"{tag}.out", run_dir / f"{tag}.err"
    cmd = [APP, "consume", "--brokers", bench.BROKERS, "--topic", topic, "--output", outdir,
           "--mysql-url", MYSQL_URL, "--until-caught-up", "--close-windows",
           "--enrich-query", query, "--mysql-timeout", "600s", *extra]
    log(f"{tag}: app consume --enrich-query '{query}' {' '.join(extra)}")
    m = measure([str(c) for c in cmd], cwd=run_dir, stdout=str(out), stderr=str(err))
    bench.check(m, "app consume", err)
    text = out.read_text()
    read = int(re.search(r"records read: (\d+)", text).group(1))
    if read != rows:
        raise SystemExit(f"bench: app consume read {read} records, expected {rows}; see {out}")
    r = {"tag": tag, "rows": rows, "wall_s": m["wall_s"],
         "records_per_s": round(rows / m["wall_s"]),
         "cpu_s": round(m["cpu_user_s"] + m["cpu_sys_s"], 2),
         "peak_rss_mb": m["peak_rss_tree_mb"], "max_rss_single_mb": m["max_rss_single_mb"],
         "extra": extra}
    hits = re.search(r"enrichment: (\d+) hits, (\d+) misses", text)
    if hits:
        r["hits"], r["misses"] = int(hits.group(1)), int(hits.group(2))
    partial = re.search(r"partial cache: hit rate ([\d.]+)% .*?, (\d+) lookups asking (\d+) keys"
                        r".*?, (\d+) entries in ([\d.]+) MB, (\d+) evicted", text)
    if partial:
        r.update(hit_rate_pct=float(partial.group(1)), lookups=int(partial.group(2)),
                 keys_asked=int(partial.group(3)), entries=int(partial.group(4)),
                 cache_mb=float(partial.group(5)), evicted=int(partial.group(6)),
                 lookups_per_s=round(int(partial.group(2)) / m["wall_s"], 1))
    shutil.rmtree(outdir, ignore_errors=True)
    return r


def best_of(n, once):
    runs = [once() for _ in range(n)]
    return sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]


def render(results, info, args):
    lines = [
        f"Enrichment, {args.rows:,} records (1 partition, lz4), app consume --until-caught-up "
        f"--close-windows, median of {args.repeat}; {info.get('cores')} cores.",
        "",
        "| dimension | cache | records/s | vs full (small) | peak RSS | CPU s | hit rate | "
        "lookups/s | keys asked | cache entries (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = next((r for r in results if r["tag"] == "full-small"), None)
    for r in results:
        dim, cache = r["tag"].split("-")[1], r["tag"].split("-")[0]
        vs = f"{r['records_per_s'] / base['records_per_s']:.2f}x" if base else ""
        lines.append(
            f"| {'bancos (~1.5k rows)' if dim == 'small' else f'{args.dim_rows:,} rows'} | {cache} "
            f"| {r['records_per_s']:,} | {vs} | {r['peak_rss_mb']:.0f} MB | {r['cpu_s']} | "
            f"{r.get('hit_rate_pct', '')}{'%' if 'hit_rate_pct' in r else ''} | "
            f"{r.get('lookups_per_s', '')} | {r.get('keys_asked', '')} | "
            f"{r.get('entries', '')}{' (' + str(r['cache_mb']) + ')' if 'cache_mb' in r else ''} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim-rows", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--with-full-big", action="store_true",
                    help="also the full cache on the big dimension (needs gigabytes)")
    ap.add_argument("--keep", action="store_true", help="keep the topics")
    args = ap.parse_args()
    if not APP.exists():
        raise SystemExit(f"bench: {APP} is missing; run `cargo build --release --bin app`")
    started = dt.datetime.now(dt.timezone.utc)
    run_dir = WORK / started.strftime("%Y%m%dT%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    table = ensure_dimension(args.dim_rows)
    src_dir, src_files = bench.dataset(args.rows)
    skewed = skewed_dataset(src_files, args.rows, args.dim_rows)
    topics = []
    results = []
    try:
        small_topic = f"bench-{uuid.uuid4().hex[:8]}-enrich-small"
        big_topic = f"bench-{uuid.uuid4().hex[:8]}-enrich-big"
        topics += [small_topic, big_topic]
        bench.app_produce(run_dir, small_topic, src_dir, args.rows, 1, "produce-small")
        bench.app_produce(run_dir, big_topic, skewed, args.rows, 1, "produce-big")
        small_q = "SELECT cnpj, segmento, nome FROM bancos"
        big_q = f"SELECT cnpj, segmento, nome FROM {table}"
        partial = ["--enrich-cache", "partial"]
        runs = [("full-small", small_topic, small_q, []),
                ("partial-small", small_topic, small_q, partial),
                ("partial-big", big_topic, big_q, partial)]
        if args.with_full_big:
            runs.append(("full-big", big_topic, big_q, []))
        for tag, topic, query, extra in runs:
            results.append(best_of(args.repeat, lambda: consume(
                run_dir, topic, args.rows, tag, query, extra)))
            log(f"{tag}: {results[-1]}")
    finally:
        if not args.keep:
            bench.delete_topics(topics)
    info = bench.machine()
    report = render(results, info, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"{started:%Y-%m-%d}-enrich"
    (RESULTS / f"{name}.md").write_text(f"# Enrichment benchmark {started:%Y-%m-%d}\n\n{report}\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(
        {"machine": info, "args": vars(args), "started": started.isoformat(),
         "results": results}, indent=1, default=str) + "\n")
    print("\n" + report)
    shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
