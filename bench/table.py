"""Delta table benchmark (issue 24): what publishing every closed window through a Delta commit
costs, and how fast the table opens as its log grows. Run through scripts/bench.sh
(`make bench-table`; `make bench` runs it after the main benchmark), which installs what it
needs first.

    python bench/table.py [--rows 5000000] [--partitions 1,3] [--repeat 3] [--log-commits 8640]

Steps:
- a topic of --rows records per partition count (lz4, app produce, the generator's data);
- app consume --until-caught-up --close-windows into a new directory, alternately with
  `--table delta` (the default) and `--table none`, --repeat times each, measured (wall, CPU,
  peak RSS of the process); the median of each is reported with the ratio delta/none. After
  every Delta run, python `deltalake` reads the table back: rows and duplicates of
  (kafka_partition, kafka_offset), which must be --rows and 0;
- the log: `target/release/examples/delta_log` publishes --log-commits commits as a day of
  1-minute windows over 6 partitions would, timing how long opening the table and reading every
  partition's transaction version takes at 360 commits (the first hour) and at the end, with a
  Delta checkpoint every 100 commits, and without checkpoints up to 1,000 commits (each commit
  then replays the whole log, so the run grows quadratically).
Writes bench/results/<date>-table.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import measure  # noqa: E402
import bench  # noqa: E402

ROOT = bench.ROOT
APP = bench.APP
LOG_EXAMPLE = ROOT / "target" / "release" / "examples" / "delta_log"
WORK = ROOT / ".local" / "bench-table"
RESULTS = bench.RESULTS
READERS_PY = ROOT / ".local" / "venv" / "bin" / "python"
log = bench.log


def consume(run_dir, topic, rows, tag, table):
    outdir = run_dir / f"{tag}-output"
    shutil.rmtree(outdir, ignore_errors=True)
    out, err = run_dir / f"{tag}.out", run_dir / f"{tag}.err"
    cmd = [APP, "consume", "--brokers", bench.BROKERS, "--topic", topic, "--output", outdir,
           "--mysql-url", bench.MYSQL_URL, "--until-caught-up", "--close-windows",
           "--table", table]
    log(f"{tag}: app consume --topic {topic} --until-caught-up --close-windows --table {table}")
    m = measure([str(c) for c in cmd], cwd=run_dir, stdout=str(out), stderr=str(err))
    bench.check(m, "app consume", err)
    text = out.read_text()
    read = int(re.search(r"records read: (\d+)", text).group(1))
    if read != rows:
        raise SystemExit(f"bench: app consume read {read} records, expected {rows}; see {out}")
    r = {"tag": tag, "table": table, "rows": rows, "wall_s": m["wall_s"],
         "records_per_s": round(rows / m["wall_s"]),
         "cpu_s": round(m["cpu_user_s"] + m["cpu_sys_s"], 2),
         "peak_rss_mb": m["peak_rss_tree_mb"],
         "files": len(list(outdir.glob("window=*/*.parquet")))}
    if table == "delta":
        r["commits"] = len(list((outdir / "_delta_log").glob("*.json")))
        read_back = subprocess.run(
            [str(READERS_PY), "-c",
             "import sys, deltalake; t = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table();"
             "print(t.num_rows, t.num_rows - t.group_by(['kafka_partition', 'kafka_offset'])"
             ".aggregate([]).num_rows)", str(outdir)],
            capture_output=True, text=True)
        if read_back.returncode != 0:
            raise SystemExit(f"bench: deltalake could not read {outdir}: {read_back.stderr}")
        table_rows, duplicates = map(int, read_back.stdout.split())
        if table_rows != rows or duplicates != 0:
            raise SystemExit(f"bench: the Delta table at {outdir} has {table_rows} rows "
                             f"({duplicates} duplicated), expected {rows}")
        r["table_rows"], r["duplicates"] = table_rows, duplicates
    shutil.rmtree(outdir, ignore_errors=True)
    return r


def median(runs):
    return sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]


def log_speed(commits, every):
    """examples/delta_log: (commits, open ms, app versions ms, log files) rows, and the total."""
    out = subprocess.run([str(LOG_EXAMPLE), "--dir", str(WORK / "delta-log"), "--commits",
                          str(commits), "--checkpoint-every", str(every)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench: delta_log failed: {out.stderr}")
    points = [tuple(float(x) for x in line.split())
              for line in out.stdout.splitlines() if re.match(r"^\s*\d+\s+[\d.]+", line)]
    total = re.search(r"in ([\d.]+) s \(([\d.]+) ms per commit", out.stdout)
    shutil.rmtree(WORK / "delta-log", ignore_errors=True)
    return {"checkpoint_every": every, "points": points,
            "total_s": float(total.group(1)), "ms_per_commit": float(total.group(2))}


def render(results, logs, info, args):
    lines = [
        f"`app consume --until-caught-up --close-windows`, {args.rows:,} records (lz4), "
        f"`--table delta` against `--table none`, alternating, median of {args.repeat}; "
        f"{info.get('cores')} cores, load average at start {' '.join(info.get('loadavg_start', []))}.",
        "",
        "| partitions | table | records/s | delta/none | peak RSS | CPU s | files | Delta commits | read back (deltalake) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p, pair in results.items():
        none = pair["none"]
        for table in ("none", "delta"):
            r = pair[table]
            ratio = f"{r['records_per_s'] / none['records_per_s']:.2f}x" if table == "delta" else ""
            back = (f"{r['table_rows']:,} rows, {r['duplicates']} duplicates"
                    if table == "delta" else "")
            lines.append(f"| {p} | {table} | {r['records_per_s']:,} | {ratio} | "
                         f"{r['peak_rss_mb']:.0f} MB | {r['cpu_s']} | {r['files']} | "
                         f"{r.get('commits', '')} | {back} |")
    lines += ["", f"The log: {args.log_commits:,} commits (a day of 1-minute windows over 6 "
              "partitions, one add and one `txn` each), then a new process opens the table and "
              "reads the 6 transaction versions (`examples/delta_log`, release build).", "",
              "| checkpoint every | commits | open (ms) | 6 txn versions (ms) | files in `_delta_log` |",
              "|---:|---:|---:|---:|---:|"]
    for run in logs:
        for n, open_ms, versions_ms, files in run["points"]:
            lines.append(f"| {run['checkpoint_every'] or 'never'} | {int(n):,} | {open_ms:.1f} | "
                         f"{versions_ms:.1f} | {int(files):,} |")
    for run in logs:
        lines.append("")
        lines.append(f"Checkpoint every {run['checkpoint_every'] or 'never'}: "
                     f"{run['ms_per_commit']} ms per commit on average ({run['total_s']} s).")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--partitions", default="1,3")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--log-commits", type=int, default=8640)
    ap.add_argument("--keep", action="store_true", help="keep the topics")
    args = ap.parse_args()
    for need in (APP, LOG_EXAMPLE):
        if not need.exists():
            raise SystemExit(f"bench: {need} is missing; run "
                             "`cargo build --release --bin app --example delta_log`")
    started = dt.datetime.now(dt.timezone.utc)
    run_dir = WORK / started.strftime("%Y%m%dT%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    info = bench.machine()
    data_dir, _ = bench.dataset(args.rows)
    topics, results = [], {}
    try:
        for p in [int(x) for x in args.partitions.split(",")]:
            topic = f"bench-{uuid.uuid4().hex[:8]}-table-p{p}"
            topics.append(topic)
            bench.app_produce(run_dir, topic, data_dir, args.rows, p, f"produce-p{p}")
            runs = {"delta": [], "none": []}
            for i in range(args.repeat):
                for table in ("delta", "none"):
                    runs[table].append(consume(run_dir, topic, args.rows, f"p{p}-{table}-{i}", table))
                    log(f"p{p} {table} #{i}: {runs[table][-1]}")
            results[p] = {t: median(r) for t, r in runs.items()}
    finally:
        if not args.keep:
            bench.delete_topics(topics)
    # Without checkpoints every commit replays the whole log: 1,000 commits already show it.
    logs = [log_speed(args.log_commits, 100), log_speed(min(args.log_commits, 1000), 0)]
    report = render(results, logs, info, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"{started:%Y-%m-%d}-table"
    (RESULTS / f"{name}.md").write_text(f"# Delta table benchmark {started:%Y-%m-%d}\n\n{report}\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(
        {"machine": info, "args": vars(args), "started": started.isoformat(),
         "results": results, "log": logs}, indent=1, default=str) + "\n")
    print("\n" + report)
    shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
