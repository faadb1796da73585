"""`make bench-group`: one topic of 6 partitions, consumed by 1 and by 3 `app consume --group`
instances on this machine, beside one static `--until-caught-up` instance (the bounded run the
other benchmarks use). Same topic, same binary, one run, side by side.

Every group run is measured by bench/measure.py around bench/group_run.py, which starts the
instances in its session, waits until the shared output has committed every record, then
SIGTERMs them (each stages its open windows, commits, leaves the group and must exit 0). So the
figures cover all instances together: wall time (until the last one exited, everything durable),
CPU seconds, peak RSS summed over the instances. `committed s` is from the start until the
checkpoints had routed every record (checkpoints every 500 ms; it includes connecting, loading
the enrichment table and joining the group); records/s is rows / committed s. The static run is
the bounded `--until-caught-up --close-windows` of the other benchmarks: it also closes every
window, so it writes final files where the group runs stage.

Writes bench/results/<date>-group.md and prints it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402
from measure import measure  # noqa: E402

PARTITIONS = 6
# Checkpoints of the group runs: `committed s` is when the last one lands, so it is at most this
# late (the default, 10 s, would measure the interval).
CHECKPOINT_INTERVAL = "500ms"


def group_run(run_dir, topic, rows, n):
    outdir = run_dir / f"group-{n}-output"
    shutil.rmtree(outdir, ignore_errors=True)
    group = f"bench-{uuid.uuid4().hex[:8]}-g{n}"
    out, err = run_dir / f"group-{n}.out", run_dir / f"group-{n}.err"
    cmd = [sys.executable, str(Path(__file__).parent / "group_run.py"), str(B.APP), str(n), topic,
           group, str(outdir), str(rows), str(run_dir), "--", "--brokers", B.BROKERS,
           "--mysql-url", B.MYSQL_URL, "--checkpoint-interval", CHECKPOINT_INTERVAL]
    B.log(f"group of {n}: app consume --group {group} --output {outdir.relative_to(B.ROOT)} "
          f"(x{n})")
    m = measure(cmd, cwd=run_dir, stdout=str(out), stderr=str(err))
    B.check(m, f"group of {n}", err)
    committed_s = float(re.search(r"committed_s=([\d.]+)", out.read_text()).group(1))
    # Stopped with windows still open (a stream, not a bounded run): their rows are staged.
    sources = [f"read_parquet('{outdir}/{g}', hive_partitioning = false)"
               for g in ("window=*/*.parquet", "_staging/*/*.staged") if list(outdir.glob(g))]
    total = B.duck("SELECT count(*) FROM (" + " UNION ALL ".join(
        f"SELECT kafka_offset FROM {s}" for s in sources) + ")")[0][0]
    if total != rows:
        raise SystemExit(f"bench: the group of {n} wrote {total} rows, expected {rows}")
    shutil.rmtree(outdir, ignore_errors=True)
    return m, committed_s


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--members", default="1,3", help="comma list of group sizes")
    args = ap.parse_args()
    started = dt.datetime.now(dt.timezone.utc)
    run_dir = B.WORK / ("group-" + started.strftime("%Y%m%dT%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    info = B.machine()
    data_dir, _ = B.dataset(args.rows)
    topic = f"bench-{uuid.uuid4().hex[:8]}-group-{args.rows}"
    rows = []
    try:
        B.app_produce(run_dir, topic, data_dir, args.rows, PARTITIONS, "group-input")
        m, outdir = B.app_consume(run_dir, topic, args.rows, "group-static")
        shutil.rmtree(outdir, ignore_errors=True)
        rows.append(("1 instance, static (`--until-caught-up`)", m, m["wall_s"]))
        for n in [int(x) for x in args.members.split(",")]:
            m, committed_s = group_run(run_dir, topic, args.rows, n)
            rows.append((f"{n} instance{'s' if n > 1 else ''}, `--group`", m, committed_s))
    finally:
        B.delete_topics([topic])
    load_end = open("/proc/loadavg").read().split()[:3]
    lines = [
        f"# Consumer group: 1 vs N instances — {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"{args.rows:,} records, one topic of {PARTITIONS} partitions, local output, one "
        f"machine: {info.get('cores')} cores, {info.get('memory_gib')} GiB; load average "
        f"{' '.join(info['loadavg_start'])} at the start, {' '.join(load_end)} at the end. "
        "Command: `make bench-group` (bench/group.py).",
        "",
        "| run | committed s | records/s | wall s (incl. drain) | CPU s | peak RSS (all instances) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m, committed_s in rows:
        cpu = m["cpu_user_s"] + m["cpu_sys_s"]
        lines.append(f"| {name} | {committed_s:.1f} | {args.rows / committed_s:,.0f} | "
                     f"{m['wall_s']:.1f} | {cpu:.1f} | {m['peak_rss_tree_mb']:.0f} MB |")
    lines.append("")
    report = "\n".join(lines)
    print(report)
    out = B.ROOT / "bench" / "results" / f"{started:%Y-%m-%d}-group.md"
    out.write_text(report)
    B.log(f"wrote {out.relative_to(B.ROOT)}")
    shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
