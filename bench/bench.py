"""Benchmarks side by side: the ceiling (Kafka's own perf tools, kcat), the seed's design
(kafka-python producer, PySpark Structured Streaming consumer) and us (`app produce`,
`app consume`). Run it through scripts/bench.sh (`make bench`, `bench-quick`, `bench-produce`,
`bench-consume`), which installs what it needs first; BENCHMARKS.md explains every number.

    python bench/bench.py --mode full|quick|produce|consume [--rows N]
        [--scale-rows 100000,1000000,5000000] [--partitions 1,3,6] [--systems ...]

Steps:
- produce: CSV -> a fresh topic, lz4, acks=all: app produce; kcat -P of the same records
  (key + JSON value, taken from app's topic once); ProducerPerformance at the same mean record
  size; the seed's kafka-python producer.
- consume: the topic app produced -> enriched Parquet: app consume --until-caught-up;
  ConsumerPerformance (raw fetch, no decode, no output); the seed's PySpark job. Output row
  counts and enrichment hits are checked with DuckDB.
- scaling (full mode): app produce + app consume at each --scale-rows (1 partition) and at
  --rows with each --partitions.
Writes bench/results/<date>[-mode].{md,json,png}; full mode also updates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import measure  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / ".local"
DATA = LOCAL / "bench-data"
WORK = LOCAL / "bench-work"
JARS = LOCAL / "bench-jars"
VENV_PY = LOCAL / "bench-venv" / "bin" / "python"
KAFKA_LIBS = LOCAL / "kafka" / "libs"
APP = ROOT / "target" / "release" / "app"
GEN = ROOT / "target" / "release" / "examples" / "gen_data"
RESULTS = ROOT / "bench" / "results"

BROKERS = os.environ.get("KAFKA_BROKERS", "127.0.0.1:9092")
MYSQL_PORT = os.environ.get("MYSQL_PORT", "3306")
MYSQL_URL = os.environ.get(
    "MYSQL_URL", f"mysql://reclamacoes:reclamacoes@127.0.0.1:{MYSQL_PORT}/reclamacoes_db")
JDBC_URL = os.environ.get("BENCH_JDBC_URL", f"jdbc:mysql://127.0.0.1:{MYSQL_PORT}/reclamacoes_db")

PRODUCERS = ["app", "app-before", "kcat", "producer-perf", "producer-perf-batch", "seed-python"]
# app produce's default --batch-bytes (768 KiB); the second ProducerPerformance run uses it.
APP_BATCH_BYTES = 768 * 1024
CONSUMERS = ["app", "app-s3", "app-before", "consumer-perf", "seed-spark"]
# `--app-before PATH` (or BENCH_APP_BEFORE): an earlier build of app, run next to this one on the
# same topic in the consume step, so "before" and "after" come from one run.
APP_BEFORE = os.environ.get("BENCH_APP_BEFORE")
# The output layout of that earlier build: 2 (window=…/, `--close-windows`; issues 11–12 on)
# or 1 (window_start=…/, no `--close-windows`). BENCH_APP_BEFORE_LAYOUT=1 for the old ones.
APP_BEFORE_LAYOUT = int(os.environ.get("BENCH_APP_BEFORE_LAYOUT", "2"))
LABEL = {
    ("produce", "app"): "app produce",
    ("produce", "kcat"): "kcat -P (same key+JSON)",
    ("produce", "producer-perf"): "Kafka ProducerPerformance (ceiling, client defaults)",
    ("produce", "producer-perf-batch"): "Kafka ProducerPerformance (batch.size 768 KiB like app)",
    ("produce", "seed-python"): "seed: kafka-python + DictReader",
    ("consume", "app"): "app consume -> Parquet",
    ("consume", "app-s3"): "app consume -> Parquet in S3 (local versitygw)",
    ("consume", "app-before"): "app consume, before (an earlier build)",
    ("produce", "app-before"): "app produce, before (an earlier build)",
    ("consume", "consumer-perf"): "Kafka ConsumerPerformance (raw fetch, ceiling)",
    ("consume", "seed-spark"): "seed: PySpark Structured Streaming -> Parquet",
}


SHORT = {
    "app": "app", "kcat": "kcat -P", "producer-perf": "ProducerPerf\n(client defaults)",
    "producer-perf-batch": "ProducerPerf\n(768 KiB batch)", "seed-python": "seed:\nkafka-python",
    "consumer-perf": "ConsumerPerf\n(raw fetch)", "seed-spark": "seed:\nPySpark",
    "app-before": "app\n(before)", "app-s3": "app\n(to S3)",
}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd, **kw):
    """Runs a helper command (not measured); fails loudly with its output."""
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"bench: `{' '.join(map(str, cmd))}` failed ({r.returncode}):\n"
                         f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout


# --- Kafka admin (kafka-python, in the bench venv) -------------------------------------------

def admin():
    from kafka.admin import KafkaAdminClient
    return KafkaAdminClient(bootstrap_servers=BROKERS.split(","), client_id="bench-admin")


def create_topic(name, partitions):
    from kafka.admin import NewTopic
    a = admin()
    try:
        a.create_topics([NewTopic(name, partitions, 1)])
    finally:
        a.close()
    # Wait until the metadata shows it.
    deadline = time.time() + 30
    while time.time() < deadline:
        if topic_counts(name) is not None:
            return
        time.sleep(0.5)
    raise SystemExit(f"bench: topic {name} was not visible 30s after creation")


def topic_counts(name):
    """Records in the topic (sum of end - beginning offsets), or None if it does not exist."""
    from kafka import KafkaConsumer, TopicPartition
    c = KafkaConsumer(bootstrap_servers=BROKERS.split(","), enable_auto_commit=False)
    try:
        parts = c.partitions_for_topic(name)
        if not parts:
            return None
        tps = [TopicPartition(name, p) for p in parts]
        end, beg = c.end_offsets(tps), c.beginning_offsets(tps)
        return sum(end[tp] - beg[tp] for tp in tps)
    finally:
        c.close()


def delete_topics(names):
    if not names:
        return
    a = admin()
    try:
        a.delete_topics(list(names))
        log(f"deleted {len(names)} topic(s)")
    except Exception as e:  # report, never fail the run for cleanup
        log(f"could not delete topics {names}: {e}")
    finally:
        a.close()


# --- data ----------------------------------------------------------------------------------

def dataset(rows):
    """Generates (once) `rows` rows; returns the directory and the list of its CSV files."""
    d = DATA / f"n{rows}"
    done = d / ".done"
    if not done.exists():
        shutil.rmtree(d, ignore_errors=True)
        log(f"generating {rows:,} rows into {d.relative_to(ROOT)}")
        run([GEN, "--rows", rows, "--out", d, "--seed", 42])
        done.write_text("ok\n")
    files = sorted(d.glob("*.csv"))
    return d, files


def export_jsonl(topic, path, rows):
    """The topic's records as `key<TAB>value` lines (what kcat -P -K'\\t' sends back)."""
    if path.exists() and path.with_suffix(".ok").exists():
        return
    log(f"exporting {topic} to {path.relative_to(ROOT)} with kcat -C")
    with open(path, "wb") as f:
        r = subprocess.run(["kcat", "-C", "-b", BROKERS, "-t", topic, "-e", "-q",
                            "-f", "%k\t%s\n"], stdout=f, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise SystemExit(f"bench: kcat -C failed: {r.stderr.decode()[-2000:]}")
    n = sum(1 for _ in open(path, "rb"))
    if n != rows:
        raise SystemExit(f"bench: {path} has {n} lines, expected {rows}")
    path.with_suffix(".ok").write_text("ok\n")


def jsonl_sizes(path):
    """(records, key+value bytes, value bytes) of a key<TAB>value lines file."""
    n = kv = v = 0
    with open(path, "rb") as f:
        for line in f:
            n += 1
            key, _, value = line.rstrip(b"\n").partition(b"\t")
            kv += len(key) + len(value)
            v += len(value)
    return n, kv, v


# --- measured systems ----------------------------------------------------------------------

def result(step, system, rows, m, payload_bytes, extra=None):
    wall = m["wall_s"]
    r = {
        "step": step, "system": system, "label": LABEL.get((step, system), system),
        "rows": rows, "wall_s": wall,
        "records_per_s": round(rows / wall) if wall else None,
        "mb_per_s": round(payload_bytes / 1e6 / wall, 2) if wall and payload_bytes else None,
        "cpu_s": round(m["cpu_user_s"] + m["cpu_sys_s"], 2),
        "cpu_s_per_m_rows": round((m["cpu_user_s"] + m["cpu_sys_s"]) * 1e6 / rows, 2)
        if rows else None,
        "cpu_user_s": m["cpu_user_s"], "cpu_sys_s": m["cpu_sys_s"],
        "max_rss_single_mb": m["max_rss_single_mb"], "peak_rss_tree_mb": m["peak_rss_tree_mb"],
        "first_output_s": m["first_output_s"], "cmd": [redact(c) for c in m["cmd"]],
        "rc": m["rc"],
    }
    r.update(extra or {})
    return r


def redact(arg):
    """Hides the password of a URL (`mysql://user:***@host`): results are committed."""
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", arg)


def check(m, what, logfile):
    if m["rc"] != 0:
        tail = Path(logfile).read_text(errors="replace")[-3000:] if Path(logfile).exists() else ""
        raise SystemExit(f"bench: {what} failed with exit {m['rc']}; log {logfile}:\n{tail}")


def app_produce(run_dir, topic, files_dir, rows, partitions, tag, binary=None):
    create_topic(topic, partitions)
    out, err = run_dir / f"{tag}.out", run_dir / f"{tag}.err"
    cmd = [binary or APP, "produce", "--brokers", BROKERS, "--topic", topic, "--partitions", partitions,
           "--compression", "lz4", "--rejects", run_dir / "rejects", files_dir]
    log(f"{tag}: {' '.join(map(str, cmd[1:]))}")
    m = measure([str(c) for c in cmd], cwd=run_dir, stdout=str(out), stderr=str(err))
    check(m, "app produce", err)
    text = out.read_text()
    sent = int(re.search(r"rows sent \(acknowledged\): (\d+)", text).group(1))
    if sent != rows or topic_counts(topic) != rows:
        raise SystemExit(f"bench: app produce sent {sent} rows, topic has {topic_counts(topic)}, "
                         f"expected {rows}; see {out}")
    return m


def app_consume(run_dir, topic, rows, tag, binary=None):
    """app consume as a bounded run: --until-caught-up --close-windows, so every window closes
    and the whole topic is in the table, as with the seed's trigger(availableNow=True). With
    `binary` (an earlier build, layout 1) the flags and layout of that version are used."""
    outdir = run_dir / f"{tag}-output"
    shutil.rmtree(outdir, ignore_errors=True)
    out, err = run_dir / f"{tag}.out", run_dir / f"{tag}.err"
    before = binary is not None and APP_BEFORE_LAYOUT == 1
    cmd = [binary or APP, "consume", "--brokers", BROKERS, "--topic", topic, "--output", outdir,
           "--mysql-url", MYSQL_URL, "--until-caught-up"]
    if not before:
        cmd.append("--close-windows")
    log(f"{tag}: {'(before) ' if before else ''}app consume --topic {topic} --output "
        f"{outdir.relative_to(ROOT)} {' '.join(map(str, cmd[8:]))}")
    m = measure([str(c) for c in cmd], cwd=run_dir, stdout=str(out), stderr=str(err),
                watch=str(outdir),
                pattern="window_start=*/*.parquet" if before else "window=*/*.parquet")
    check(m, "app consume", err)
    text = out.read_text()
    read = int(re.search(r"records read: (\d+)", text).group(1))
    if read != rows:
        raise SystemExit(f"bench: app consume read {read} records, expected {rows}; see {out}")
    return m, outdir


# --- app-s3: the same consume into the local S3 server (scripts/s3.sh, versitygw) -------------
# Started here when it is not running (and stopped again at the end); the output is read back
# with pyarrow's S3 filesystem from the readers' venv (scripts/python-env.sh). The server's own
# CPU is measured from /proc and reported as server_cpu_s (the app's cpu_s excludes it).
S3_SCRIPT = ROOT / "scripts" / "s3.sh"
S3_STARTED = LOCAL / "bench-s3-started"
S3_ENV = {"AWS_ENDPOINT_URL": "http://127.0.0.1:7070", "AWS_ALLOW_HTTP": "true",
          "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "reclamacoes",
          "AWS_SECRET_ACCESS_KEY": "reclamacoes-secret"}  # local development only
READERS_PY = LOCAL / "venv" / "bin" / "python"


def s3_up():
    S3_STARTED.unlink(missing_ok=True)
    run(["bash", S3_SCRIPT, "up", "--record", S3_STARTED])
    run(["bash", ROOT / "scripts" / "python-env.sh"])


def s3_down():
    if S3_STARTED.exists():
        run(["bash", S3_SCRIPT, "down"])
        S3_STARTED.unlink(missing_ok=True)


def s3_server_cpu():
    try:
        pid = (LOCAL / "s3" / "versitygw.pid").read_text().strip()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


S3_COUNT = r"""
import sys, pyarrow.fs as pafs, pyarrow.parquet as pq, pyarrow.compute as pc
s3 = pafs.S3FileSystem(endpoint_override="127.0.0.1:7070", scheme="http", region="us-east-1",
                       access_key="reclamacoes", secret_key="reclamacoes-secret")
rows = hits = size = 0
for info in s3.get_file_info(pafs.FileSelector(sys.argv[1], recursive=True)):
    if info.type != pafs.FileType.File:
        continue
    size += info.size
    if info.path.endswith(".parquet") or (info.path.endswith(".pq") and "/_late/" in info.path):
        t = pq.read_table(info.path, filesystem=s3, columns=["banco_segmento"])
        rows += t.num_rows
        hits += t.num_rows - t.column(0).null_count
print(rows, hits, size)
"""


def app_consume_s3(run_dir, topic, rows, tag):
    prefix = f"bench/{tag}-{uuid.uuid4().hex[:8]}"
    out, err = run_dir / f"{tag}.out", run_dir / f"{tag}.err"
    cmd = [APP, "consume", "--brokers", BROKERS, "--topic", topic, "--output",
           f"s3://reclamacoes/{prefix}/", "--mysql-url", MYSQL_URL, "--until-caught-up",
           "--close-windows"]
    log(f"{tag}: app consume --topic {topic} --output s3://reclamacoes/{prefix}/ ...")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(S3_ENV)
    cpu0 = s3_server_cpu()
    m = measure([str(c) for c in cmd], cwd=run_dir, env=env, stdout=str(out), stderr=str(err),
                watch=str(LOCAL / "s3" / "data" / "reclamacoes" / prefix),
                pattern="window=*/*.parquet")
    cpu1 = s3_server_cpu()
    check(m, "app consume (S3)", err)
    read = int(re.search(r"records read: (\d+)", out.read_text()).group(1))
    if read != rows:
        raise SystemExit(f"bench: app consume (S3) read {read} records, expected {rows}; see {out}")
    total, hits, size = map(int, run([READERS_PY, "-c", S3_COUNT, f"reclamacoes/{prefix}"]).split())
    shutil.rmtree(LOCAL / "s3" / "data" / "reclamacoes" / prefix, ignore_errors=True)
    extra = {"output_rows": total, "enrich_hits": hits, "output_mb": round(size / 1e6, 1),
             "server_cpu_s": round(cpu1 - cpu0, 2) if cpu0 is not None and cpu1 is not None
             else None}
    return m, extra


def duck(sql):
    import duckdb
    return duckdb.sql(sql).fetchall()


def app_output_counts(outdir, before=False):
    """Rows and enriched rows, read the way a user reads the output: every Parquet file under
    it with Hive partitioning (layout 2), plus late rows if any."""
    if before:
        parts = [f"'{outdir}/window_start=*/*.parquet'"]
        if list(outdir.glob("_late/**/*.parquet")):
            parts.append(f"'{outdir}/_late/**/*.parquet'")
        src = f"read_parquet([{', '.join(parts)}], hive_partitioning = false, union_by_name = true)"
        return duck(f"SELECT count(*), count(banco_segmento) FROM {src}")[0]
    total, hits = duck(f"SELECT count(*), count(banco_segmento) FROM "
                       f"read_parquet('{outdir}/**/*.parquet', hive_partitioning = true)")[0]
    if list(outdir.glob("_late/*/*.pq")):
        late, late_hits = duck(f"SELECT count(*), count(banco_segmento) FROM "
                               f"read_parquet('{outdir}/_late/*/*.pq')")[0]
        total, hits = total + late, hits + late_hits
    return total, hits


def spark_output_counts(outdir):
    src = f"read_parquet('{outdir}/window_start=*/*.parquet', hive_partitioning = false)"
    return duck(f"SELECT count(*), count(banco_segmento) FROM {src}")[0]


SPARK_READ = r"""
import json, sys
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local[2]").appName("read-app-output")
         .config("spark.ui.enabled", "false").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
df = spark.read.parquet(sys.argv[1])
types = dict(df.dtypes)
print(json.dumps({"rows": df.count(), "window_start": types.get("window_start"),
                  "window": types.get("window")}))
"""


def spark_reads(outdir):
    """`spark.read.parquet(output)` on app's output: rows and the type of window_start."""
    out = subprocess.run([str(VENV_PY), "-c", SPARK_READ, str(outdir)], capture_output=True,
                         text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"bench: spark.read.parquet of app's output failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


REPEAT = 1  # runs per measurement of the cheap systems (--repeat); the seed's run once


def median_of(n, once):
    """Calls once(i) n times; returns the (m, extra) of the run with the median wall time, with
    every run's records/s-relevant wall time in extra["runs_wall_s"]."""
    runs = [once(i) for i in range(n)]
    runs.sort(key=lambda r: r[0]["wall_s"])
    m, extra = runs[len(runs) // 2]
    extra = dict(extra or {})
    if n > 1:
        extra["runs_wall_s"] = [r[0]["wall_s"] for r in runs]
    return m, extra


def kcat_produce(run_dir, topic, jsonl, rows, partitions, topics):
    """kcat -P of app's own key<TAB>JSON lines into a fresh topic of `partitions` partitions."""
    topics.append(topic)
    create_topic(topic, partitions)
    err = run_dir / f"{topic}.err"
    cmd = ["kcat", "-P", "-b", BROKERS, "-t", topic, "-z", "lz4", "-X", "acks=all",
           "-K", "\t", "-l", str(jsonl)]
    log(f"kcat -P -b {BROKERS} -t {topic} ({partitions} partitions) -z lz4 -X acks=all -K '\\t' "
        f"-l {jsonl.name}")
    m = measure(cmd, stderr=str(err))
    check(m, "kcat -P", err)
    got = topic_counts(topic)
    if got != rows:
        raise SystemExit(f"bench: kcat -P left {got} records in {topic}, expected {rows}")
    return m, {"topic": topic}


def produce_partitions_step(run_dir, rows, systems, partitions, topics, results):
    """Produce mode: app produce and kcat -P of the same lines into fresh topics of each
    partition count, 1 included. The counts take turns within each repetition (1, 3, 6, 1, 3,
    6, ...), so "vs 1 partition" compares runs made minutes apart under the same conditions: the
    side-by-side 1-partition runs come first, before the seed and the Java tools."""
    data_dir, _ = dataset(rows)
    jsonl = DATA / f"n{rows}.jsonl"
    _, kv_bytes, _ = jsonl_sizes(jsonl)
    uid = uuid.uuid4().hex[:8]
    counts = sorted(set([1, *partitions]))
    runs = {}
    for i in range(REPEAT):
        for p in counts:
            if "app" in systems:
                t = f"bench-{uid}-produce-app-p{p}-{i}"
                topics.append(t)
                m = app_produce(run_dir, t, data_dir, rows, p, f"produce-app-p{p}-{i}")
                runs.setdefault(("app", p), []).append((m, {}))
            if "kcat" in systems:
                runs.setdefault(("kcat", p), []).append(kcat_produce(
                    run_dir, f"bench-{uid}-produce-kcat-p{p}-{i}", jsonl, rows, p, topics))
    for (system, p), done in runs.items():
        m, extra = median_of(len(done), lambda j, done=done: done[j])
        results.append(result("produce-partitions", system, rows, m, kv_bytes,
                              dict(extra, partitions=p)))


def produce_step(run_dir, rows, systems, topics, results):
    data_dir, files = dataset(rows)
    uid = uuid.uuid4().hex[:8]

    def app_once(i):
        t = f"bench-{uid}-produce-app-{i}"
        topics.append(t)
        return app_produce(run_dir, t, data_dir, rows, 1, f"produce-app-{i}"), {"topic": t}

    m, extra = median_of(REPEAT if "app" in systems else 1, app_once)
    t_app = f"bench-{uid}-produce-app-0"
    jsonl = DATA / f"n{rows}.jsonl"
    export_jsonl(t_app, jsonl, rows)
    n, kv_bytes, v_bytes = jsonl_sizes(jsonl)
    record_size = round(v_bytes / n)
    log(f"app JSON: {n:,} records, mean value {record_size} B, key+value {kv_bytes / 1e6:.1f} MB")
    if "app" in systems:
        results.append(result("produce", "app", rows, m, kv_bytes, extra))
    if "app-before" in systems and APP_BEFORE:
        def before_once(i):
            t = f"bench-{uid}-produce-before-{i}"
            topics.append(t)
            return (app_produce(run_dir, t, data_dir, rows, 1, f"produce-before-{i}",
                                binary=APP_BEFORE), {"topic": t, "binary": APP_BEFORE})

        m, extra = median_of(REPEAT, before_once)
        results.append(result("produce", "app-before", rows, m, kv_bytes, extra))

    if "kcat" in systems:
        m, extra = median_of(REPEAT, lambda i: kcat_produce(run_dir, f"bench-{uid}-produce-kcat-{i}",
                                                            jsonl, rows, 1, topics))
        results.append(result("produce", "kcat", rows, m, kv_bytes, extra))

    for system, extra_props in (("producer-perf", []),
                                ("producer-perf-batch", [f"batch.size={APP_BATCH_BYTES}",
                                                         "linger.ms=5"])):
        if system not in systems:
            continue

        def perf_once(i, system=system, extra_props=extra_props):
            t = f"bench-{uid}-produce-{system}-{i}"
            topics.append(t)
            create_topic(t, 1)
            out, err = run_dir / f"produce-{system}-{i}.out", run_dir / f"produce-{system}-{i}.err"
            cmd = ["java", "-cp", f"{KAFKA_LIBS}/*", "org.apache.kafka.tools.ProducerPerformance",
                   "--topic", t, "--num-records", str(rows), "--record-size", str(record_size),
                   "--throughput", "-1", "--producer-props", f"bootstrap.servers={BROKERS}",
                   "acks=all", "compression.type=lz4", *extra_props]
            log(f"produce-{system}: ProducerPerformance --num-records {rows} --record-size "
                f"{record_size} {' '.join(extra_props)}")
            m = measure(cmd, stdout=str(out), stderr=str(err))
            check(m, "ProducerPerformance", err)
            last = [ln for ln in out.read_text().splitlines() if "records sent" in ln][-1]
            own = re.search(r"([\d.]+) records/sec \(([\d.]+) MB/sec\)", last)
            return m, {"topic": t, "tool_records_per_s": float(own.group(1)),
                       "tool_mb_per_s": float(own.group(2)), "record_size": record_size,
                       "extra_props": extra_props}

        m, extra = median_of(REPEAT, perf_once)
        results.append(result("produce", system, rows, m, rows * record_size, extra))

    if "seed-python" in systems:
        t = f"bench-{uid}-produce-seed"
        topics.append(t)
        create_topic(t, 1)
        script = ROOT / "bench" / "seed_producer.py"
        counted = json.loads(run([VENV_PY, script, "--topic", t, "--count-bytes", *files]))
        out, err = run_dir / "produce-seed.out", run_dir / "produce-seed.err"
        cmd = [str(VENV_PY), str(script), "--brokers", BROKERS, "--topic", t,
               "--compression", "lz4", *map(str, files)]
        log(f"produce-seed: seed_producer.py --topic {t} --compression lz4 ({len(files)} files)")
        m = measure(cmd, stdout=str(out), stderr=str(err))
        check(m, "the seed's kafka-python producer", err)
        got = topic_counts(t)
        if got != rows:
            raise SystemExit(f"bench: seed producer left {got} records in {t}, expected {rows}")
        results.append(result("produce", "seed-python", rows, m, counted["value_bytes"], {
            "topic": t, "mean_value_bytes": round(counted["value_bytes"] / rows)}))
    return t_app, kv_bytes


def consume_step(run_dir, rows, systems, topic, payload_bytes, results):
    checks = {}
    if "app" in systems:
        def app_once(i):
            m, outdir = app_consume(run_dir, topic, rows, f"consume-{rows}-app-{i}")
            total, hits = app_output_counts(outdir)
            extra = {"output_rows": total, "enrich_hits": hits,
                     "output_mb": round(dir_bytes(outdir) / 1e6, 1),
                     "output_files": len(list(outdir.glob("window=*/*.parquet")))}
            if i == 0 and "seed-spark" in systems and VENV_PY.exists():
                extra["spark_read"] = spark_reads(outdir)
                log(f"spark.read.parquet(app's output): {extra['spark_read']}")
            shutil.rmtree(outdir, ignore_errors=True)
            return m, extra

        m, extra = median_of(REPEAT, app_once)
        checks["app"] = (extra["output_rows"], extra["enrich_hits"])
        results.append(result("consume", "app", rows, m, payload_bytes, extra))
    if "app-s3" in systems:
        s3_up()
        try:
            m, extra = median_of(REPEAT, lambda i: app_consume_s3(
                run_dir, topic, rows, f"consume-{rows}-app-s3-{i}"))
        finally:
            s3_down()
        checks["app-s3"] = (extra["output_rows"], extra["enrich_hits"])
        results.append(result("consume", "app-s3", rows, m, payload_bytes, extra))
    if "app-before" in systems and APP_BEFORE:
        def before_once(i):
            m, outdir = app_consume(run_dir, topic, rows, f"consume-{rows}-before-{i}",
                                    binary=APP_BEFORE)
            total, hits = app_output_counts(outdir, before=APP_BEFORE_LAYOUT == 1)
            extra = {"output_rows": total, "enrich_hits": hits,
                     "output_mb": round(dir_bytes(outdir) / 1e6, 1), "binary": APP_BEFORE}
            shutil.rmtree(outdir, ignore_errors=True)
            return m, extra

        m, extra = median_of(REPEAT, before_once)
        checks["app-before"] = (extra["output_rows"], extra["enrich_hits"])
        results.append(result("consume", "app-before", rows, m, payload_bytes, extra))
    if "consumer-perf" in systems:
        def perf_once(i):
            out, err = (run_dir / f"consume-{rows}-perf-{i}.out",
                        run_dir / f"consume-{rows}-perf-{i}.err")
            cmd = ["java", "-cp", f"{KAFKA_LIBS}/*", "org.apache.kafka.tools.ConsumerPerformance",
                   "--bootstrap-server", BROKERS, "--topic", topic, "--messages", str(rows)]
            log(f"consume-perf: ConsumerPerformance --topic {topic} --messages {rows}")
            m = measure(cmd, stdout=str(out), stderr=str(err))
            check(m, "ConsumerPerformance", err)
            lines = [ln for ln in out.read_text().splitlines() if ln.strip()]
            hi = next(i for i, ln in enumerate(lines) if ln.startswith("start.time"))
            names = [x.strip() for x in lines[hi].split(",")]
            values = [x.strip() for x in lines[hi + 1].split(",")]
            own = dict(zip(names, values))
            got = int(float(own["data.consumed.in.nMsg"]))
            if got != rows:
                raise SystemExit(f"bench: ConsumerPerformance read {got} records, expected {rows}")
            return m, {"tool_records_per_s": float(own["nMsg.sec"]),
                       "tool_mb_per_s": float(own["MB.sec"])}

        m, extra = median_of(REPEAT, perf_once)
        results.append(result("consume", "consumer-perf", rows, m, payload_bytes, extra))
    if "seed-spark" in systems:
        outdir = run_dir / f"consume-{rows}-spark-output"
        shutil.rmtree(outdir, ignore_errors=True)
        out, err = run_dir / f"consume-{rows}-spark.out", run_dir / f"consume-{rows}-spark.err"
        cmd = [str(VENV_PY), str(ROOT / "bench" / "spark_consumer.py"), "--brokers", BROKERS,
               "--topic", topic, "--output", str(outdir), "--jars-dir", str(JARS),
               "--jdbc-url", JDBC_URL]
        log(f"consume-spark: spark_consumer.py --topic {topic} --output {outdir.relative_to(ROOT)}")
        m = measure(cmd, cwd=run_dir, stdout=str(out), stderr=str(err), watch=str(outdir),
                    pattern="window_start=*/*.parquet")
        check(m, "the seed's PySpark consumer", err)
        total, hits = spark_output_counts(outdir)
        checks["seed-spark"] = (total, hits)
        results.append(result("consume", "seed-spark", rows, m, payload_bytes, {
            "output_rows": total, "enrich_hits": hits,
            "output_mb": round(dir_bytes(outdir) / 1e6, 1),
            "spark": json.loads(out.read_text().strip().splitlines()[-1]).get("spark")}))
    for name, (total, hits) in checks.items():
        if total != rows:
            raise SystemExit(f"bench: {name} wrote {total} output rows, expected {rows}")
    if len(set(checks.values())) > 1:
        raise SystemExit(f"bench: output rows / enrichment hits differ between systems: {checks}")
    if checks:
        log(f"output check (DuckDB): rows and enrichment hits agree: {checks}")


def dir_bytes(d):
    return sum(p.stat().st_size for p in Path(d).rglob("*") if p.is_file())


def scaling_step(run_dir, scale_rows, partitions, base_rows, topics, results):
    points = [(n, 1) for n in scale_rows] + [(base_rows, p) for p in partitions if p != 1]
    # Peak RSS must stay bounded by configuration at the largest backlog with 3 partitions too.
    if max(scale_rows, default=0) > base_rows and 3 in partitions:
        points.append((max(scale_rows), 3))
    for n, p in points:
        if any(r["step"] == "scaling-produce" and r["rows"] == n and r["partitions"] == p
               for r in results):
            continue
        data_dir, _ = dataset(n)
        uid = uuid.uuid4().hex[:8]
        made = []

        def produce_once(i):
            t = f"bench-{uid}-scale-{n}-p{p}-{i}"
            made.append(t)
            return app_produce(run_dir, t, data_dir, n, p, f"scale-produce-{n}-p{p}-{i}"), {}

        m, extra = median_of(REPEAT, produce_once)
        results.append(result("scaling-produce", "app", n, m, None, dict(extra, partitions=p)))

        def consume_once(i):
            m, outdir = app_consume(run_dir, made[0], n, f"scale-consume-{n}-p{p}-{i}")
            extra = {"output_files": len(list(outdir.glob("window=*/*.parquet")))}
            shutil.rmtree(outdir, ignore_errors=True)
            return m, extra

        if not any(r["step"] == "scaling-consume" and r["rows"] == n and r["partitions"] == p
                   for r in results):
            m, extra = median_of(REPEAT, consume_once)
            results.append(result("scaling-consume", "app", n, m, None,
                                  dict(extra, partitions=p)))
        delete_topics(made)


# --- report ----------------------------------------------------------------------------------

def machine():
    info = {"cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release()}
    try:
        mem = next(ln for ln in open("/proc/meminfo") if ln.startswith("MemTotal"))
        info["memory_gib"] = round(int(mem.split()[1]) / 2**20, 1)
        model = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
        info["cpu"] = model.split(":", 1)[1].strip()
    except (OSError, StopIteration):
        pass
    info["loadavg_start"] = open("/proc/loadavg").read().split()[:3]

    def version(cmd, pattern=r"(.+)"):
        try:
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            m = re.search(pattern, text.stdout + text.stderr)
            return m.group(1).strip() if m else None
        except (OSError, subprocess.TimeoutExpired):
            return None

    info["rustc"] = version(["rustc", "--version"])
    info["java"] = version(["java", "-version"], r'version "([^"]+)"')
    info["kcat"] = version(["kcat", "-V"], r"Version ([\w.\-]+)")
    info["librdkafka"] = version(["kcat", "-V"], r"librdkafka ([\w.\-]+)")
    kafka_jar = sorted(KAFKA_LIBS.glob("kafka-clients-*.jar"))
    info["kafka"] = kafka_jar[-1].name.removeprefix("kafka-clients-").removesuffix(".jar") \
        if kafka_jar else None
    info["pyspark"] = version([VENV_PY, "-c", "import pyspark; print(pyspark.__version__)"])
    info["kafka_python"] = version([VENV_PY, "-c", "import kafka; print(kafka.__version__)"])
    return info


def short_path(arg):
    """Repository paths relative to the root, so commands read the same on every machine."""
    root = str(ROOT) + "/"
    return arg.replace(root, "") if isinstance(arg, str) else str(arg)


def fmt(v, digits=0):
    if v is None:
        return "–"
    if isinstance(v, float) and digits:
        return f"{v:,.{digits}f}"
    return f"{round(v):,}" if isinstance(v, (int, float)) else str(v)


def ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "–"


def add_produce_ratios(add, rows):
    """The produce step's targets (issue 15), from this run only: app vs kcat -P and vs the
    seed in records/s, and CPU seconds per million rows side by side."""
    by = {r["system"]: r for r in rows}
    app = by.get("app")
    if not app:
        return
    add("| app produce vs | records/s ratio | CPU s per 1M rows: app | CPU s per 1M rows: other |")
    add("|---|---:|---:|---:|")
    for system in ("kcat", "seed-python", "producer-perf-batch", "producer-perf"):
        r = by.get(system)
        if r:
            add(f"| {r['label']} | {ratio(app['records_per_s'], r['records_per_s'])} | "
                f"{fmt(app.get('cpu_s_per_m_rows'), 2)} | {fmt(r.get('cpu_s_per_m_rows'), 2)} |")
    add("")


def render(results, info, args, started, finished):
    lines = []
    add = lines.append
    add(f"Run: {started:%Y-%m-%d %H:%M} UTC, mode `{args.mode}`, {args.rows:,} rows for the "
        f"side-by-side steps, {(finished - started).total_seconds() / 60:.1f} min in all. "
        f"app, kcat and the Kafka tools: median of {args.repeat} run(s) each (by wall time); "
        "the seed's producer and consumer: one run.")
    add("")
    add(f"Machine: {info.get('cores')} cores ({info.get('cpu', '?')}), "
        f"{info.get('memory_gib', '?')} GiB memory, Linux {info.get('kernel')}; "
        f"load average at start {' '.join(info.get('loadavg_start', []))}, at end "
        f"{' '.join(info.get('loadavg_end', []))}. Versions: {info.get('rustc')}, Java "
        f"{info.get('java')}, Kafka {info.get('kafka')} (broker and tools), kcat "
        f"{info.get('kcat')} (librdkafka {info.get('librdkafka')}), kafka-python "
        f"{info.get('kafka_python')}, pyspark {info.get('pyspark')}.")
    add("")
    sections = [("produce", None, "Produce: CSV -> topic (lz4, acks=all, fresh 1-partition topic each)")]
    for n in sorted({r["rows"] for r in results if r["step"] == "consume"}):
        sections.append(("consume", n, f"Consume: {n:,} records, topic -> enriched Parquet "
                                       "(same topic for all)"))
    for step, size, title in sections:
        rows = [r for r in results if r["step"] == step and (size is None or r["rows"] == size)]
        if not rows:
            continue
        base = next((r for r in rows if r["system"] == "app"), None)
        add(f"### {title}")
        add("")
        add("| system | records/s | MB/s | wall s | CPU s (user+sys) | CPU µs/record | peak RSS MB | "
            "time to first output s | records/s vs app | CPU s vs app | RSS vs app |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            per = r["cpu_s"] / r["rows"] * 1e6 if r.get("rows") else None
            add(f"| {r['label']} | {fmt(r['records_per_s'])} | {fmt(r['mb_per_s'], 1)} | "
                f"{fmt(r['wall_s'], 1)} | {fmt(r['cpu_s'], 1)} "
                f"({fmt(r['cpu_user_s'], 1)}+{fmt(r['cpu_sys_s'], 1)}) | {fmt(per, 2)} | "
                f"{fmt(r['peak_rss_tree_mb'])} | {fmt(r['first_output_s'], 1)} | "
                f"{ratio(r['records_per_s'], base and base['records_per_s'])} | "
                f"{ratio(r['cpu_s'], base and base['cpu_s'])} | "
                f"{ratio(r['peak_rss_tree_mb'], base and base['peak_rss_tree_mb'])} |")
        add("")
        if step == "consume" and base:
            by = {r["system"]: r for r in rows}
            perf, spark = by.get("consumer-perf"), by.get("seed-spark")
            goals = []
            if perf:
                x = base["records_per_s"] / perf["records_per_s"]
                goal = 0.8 if size <= 1_000_000 else 0.6
                goals.append(f"app reaches **{x:.2f}x** Kafka ConsumerPerformance's records/s "
                             f"(goal ≥ {goal}x)")
            if spark:
                x = base["records_per_s"] / spark["records_per_s"]
                c = spark["cpu_s"] / base["cpu_s"]
                goals.append(f"**{x:.1f}x** the seed's PySpark records/s on **1/{c:.1f}** of its "
                             "CPU seconds (goal at 5M: ≥ 5x on ≤ 1/8)")
            goals.append(f"peak RSS {fmt(base['peak_rss_tree_mb'])} MB (goal ≤ 128 MB)")
            add("- " + "; ".join(goals) + ".")
        notes = []
        for r in rows:
            if r.get("runs_wall_s"):
                rates = sorted(round(r["rows"] / w) for w in r["runs_wall_s"])
                notes.append(f"{r['label']}: median of {len(rates)} runs; records/s ranged "
                             f"{rates[0]:,}–{rates[-1]:,}.")
            if "tool_records_per_s" in r:
                notes.append(f"{r['label']} reports itself {fmt(r['tool_records_per_s'])} "
                             f"records/s, {fmt(r['tool_mb_per_s'], 1)} MB/s (without JVM start-up).")
            if "record_size" in r:
                props = " ".join(r.get("extra_props") or []) or "no extra producer props"
                notes.append(f"{r['label']}: random {r['record_size']}-byte values (the mean "
                             f"size of app's JSON values), no key; {props}.")
            if "mean_value_bytes" in r:
                notes.append(f"The seed's values are DictReader rows as JSON strings, "
                             f"{r['mean_value_bytes']} bytes on average, no key.")
            if "output_rows" in r:
                files = (f" in {r['output_files']} table files" if r.get("output_files")
                         is not None else "")
                reader = ("pyarrow, read back from S3" if r["system"] == "app-s3" else "DuckDB")
                notes.append(f"{r['label']}: {fmt(r['output_rows'])} output rows{files}, "
                             f"{fmt(r['enrich_hits'])} enriched ({reader}), {r['output_mb']} MB "
                             "of Parquet.")
            if r.get("server_cpu_s") is not None:
                notes.append(f"{r['label']}: the S3 server (versitygw, posix backend on the same "
                             f"disk) used {r['server_cpu_s']} s of CPU besides app's.")
            if "spark_read" in r:
                sr = r["spark_read"]
                notes.append(f"`spark.read.parquet(output)` on app's output: {fmt(sr['rows'])} "
                             f"rows, `window_start` {sr['window_start']}, Hive column `window` "
                             f"{sr['window']}.")
            if r.get("binary"):
                notes.append(f"{r['label']}: `{short_path(r['binary'])}`.")
        for n in notes:
            add(f"- {n}")
        if notes:
            add("")
        if step == "produce":
            add_produce_ratios(add, rows)
    parts = [r for r in results if r["step"] == "produce-partitions"]
    if parts:
        one = {r["system"]: r for r in results if r["step"] == "produce"}
        add("### Produce: partitions (same records, fresh topic of P partitions each; the counts take turns)")
        add("")
        add("| system | partitions | records/s | wall s | CPU s | CPU s per 1M rows | "
            "peak RSS MB | records/s vs 1 partition | records/s vs kcat -P |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        # The 1-partition point of each system: its own run in this step (same conditions as
        # the 3 and 6), else (older results) the side-by-side run.
        own_one = {r["system"] for r in parts if r["partitions"] == 1}
        allp = sorted([dict(r, partitions=1) for r in one.values()
                       if r["system"] in ("app", "kcat") and r["system"] not in own_one] + parts,
                      key=lambda r: (r["system"] != "app", r["partitions"]))
        kcat_at = {r["partitions"]: r for r in allp if r["system"] == "kcat"}
        base_at = {r["system"]: r for r in allp if r["partitions"] == 1}
        for r in allp:
            base = base_at.get(r["system"])
            k = kcat_at.get(r["partitions"])
            add(f"| {r['label']} | {r['partitions']} | {fmt(r['records_per_s'])} | "
                f"{fmt(r['wall_s'], 1)} | {fmt(r['cpu_s'], 1)} | "
                f"{fmt(r.get('cpu_s_per_m_rows'), 2)} | {fmt(r['peak_rss_tree_mb'])} | "
                f"{ratio(r['records_per_s'], base and base['records_per_s'])} | "
                f"{ratio(r['records_per_s'], k and k['records_per_s'])} |")
        add("")
    cmds = [r for r in results if r["step"] in ("produce", "consume")]
    if cmds:
        add("### Exact commands (the reported run of each)")
        add("")
        add("```sh")
        for r in cmds:
            add(" ".join("$'\\t'" if c == "\t" else shlex.quote(short_path(c)) for c in r["cmd"]))
        add("```")
        add("")
    sp = [r for r in results if r["step"] == "scaling-produce"]
    sc = {(r["rows"], r["partitions"]): r for r in results if r["step"] == "scaling-consume"}
    if sp:
        add("### Scaling: app produce and app consume")
        add("")
        add("| rows | partitions | produce records/s | produce CPU s | produce peak RSS MB | "
            "consume records/s | consume CPU s | consume peak RSS MB |")
        add("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in sorted(sp, key=lambda r: (r["partitions"], r["rows"])):
            c = sc.get((r["rows"], r["partitions"]), {})
            add(f"| {fmt(r['rows'])} | {r['partitions']} | {fmt(r['records_per_s'])} | "
                f"{fmt(r['cpu_s'], 1)} | {fmt(r['peak_rss_tree_mb'])} | "
                f"{fmt(c.get('records_per_s'))} | {fmt(c.get('cpu_s'), 1)} | "
                f"{fmt(c.get('peak_rss_tree_mb'))} |")
        add("")
        add("Peak RSS goal for `app consume`: ≤ 128 MB with the default flags, whatever the "
            "backlog (docs/consume.md: Memory).")
        add("")
    return "\n".join(lines)


def chart(results, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [("produce", None)] if any(r["step"] == "produce" for r in results) else []
    steps += [("consume", n) for n in sorted({r["rows"] for r in results if r["step"] == "consume"})]
    scaling = [r for r in results if r["step"].startswith("scaling")]
    panels = len(steps) + (1 if scaling else 0)
    if panels == 0:
        return
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 5.2), squeeze=False)
    colors = {"app": "#d9534f", "kcat": "#5bc0de", "producer-perf": "#337ab7",
              "producer-perf-batch": "#1f4e79",
              "consumer-perf": "#337ab7", "seed-python": "#f0ad4e", "seed-spark": "#f0ad4e",
              "app-before": "#e8a0a0", "app-s3": "#f0ad4e"}
    for ax, (step, size) in zip(axes[0], steps):
        rows = [r for r in results if r["step"] == step and (size is None or r["rows"] == size)]
        names = [SHORT.get(r["system"], r["system"]) for r in rows]
        vals = [r["records_per_s"] for r in rows]
        bars = ax.bar(range(len(rows)), vals, color=[colors.get(r["system"], "grey") for r in rows])
        ax.set_yscale("log")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(names, fontsize=8)
        ax.set_ylabel("records/s (log scale)")
        ax.set_title(f"{step}: {rows[0]['rows']:,} records")
        for b, r in zip(bars, rows):
            ax.annotate(f"{r['records_per_s']:,}/s\n{r['peak_rss_tree_mb']:,.0f} MB RSS",
                        (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                        va="bottom", fontsize=7)
        ax.set_ylim(top=max(vals) * 6)
    if scaling:
        ax = axes[0][-1]
        points = sorted({(r["partitions"], r["rows"]) for r in scaling})
        by = {(r["step"], r["partitions"], r["rows"]): r for r in scaling}
        width = 0.38
        for k, (step, color) in enumerate((("scaling-produce", "#d9534f"),
                                           ("scaling-consume", "#8e44ad"))):
            xs = [i + (k - 0.5) * width for i in range(len(points))]
            rs = [by.get((step, p, n)) for p, n in points]
            vals = [r["records_per_s"] if r else 0 for r in rs]
            bars = ax.bar(xs, vals, width, color=color, label=f"app {step.split('-')[1]}")
            for b, r in zip(bars, rs):
                if r:
                    ax.annotate(f"{r['records_per_s'] / 1000:,.0f}k/s\n"
                                f"{r['peak_rss_tree_mb']:,.0f} MB",
                                (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                                va="bottom", fontsize=6)
        ax.set_xticks(range(len(points)))
        ax.set_xticklabels([f"{n / 1e6:g}M rows\n{p} partition{'s' if p > 1 else ''}"
                            for p, n in points], fontsize=7)
        ax.set_ylabel("records/s")
        ax.set_title("app scaling (labels: records/s, peak RSS)")
        ax.set_ylim(top=max(r["records_per_s"] for r in scaling) * 1.25)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_benchmarks_md(report, results_md, png):
    path = ROOT / "BENCHMARKS.md"
    begin, end = "<!-- bench:latest:begin -->", "<!-- bench:latest:end -->"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    block = (f"{begin}\n_Written by `make bench` from [{results_md.name}](bench/results/"
             f"{results_md.name}); chart: [{png.name}](bench/results/{png.name})._\n\n"
             f"![benchmarks](bench/results/{png.name})\n\n{report}\n{end}")
    text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    path.write_text(text)
    log(f"updated {path.relative_to(ROOT)}")


# --- main ------------------------------------------------------------------------------------

def main():
    global APP_BEFORE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mode", choices=["full", "quick", "produce", "consume"], default="quick")
    ap.add_argument("--rows", type=int, help="rows of the side-by-side steps")
    ap.add_argument("--scale-rows", help="comma list (full mode default 100000,1000000,5000000)")
    ap.add_argument("--partitions", help="comma list (full mode default 1,3,6)")
    ap.add_argument("--consume-rows",
                    help="comma list of side-by-side consume sizes (full and consume modes "
                         "default: --rows and 5000000)")
    ap.add_argument("--app-before", metavar="PATH", default=os.environ.get("BENCH_APP_BEFORE"),
                    help="an earlier build of app to run beside this one in the consume step")
    ap.add_argument("--systems", default="all",
                    help=f"comma list among {sorted(set(PRODUCERS + CONSUMERS))}, or all")
    ap.add_argument("--repeat", type=int,
                    help="runs per measurement of app, kcat and the Kafka tools; the median (by "
                         "wall time) is reported (default: 3 in full mode, else 1); the seed's "
                         "producer and consumer run once")
    ap.add_argument("--keep", action="store_true", help="keep topics and output directories")
    ap.add_argument("--no-update", action="store_true", help="full mode: leave BENCHMARKS.md")
    ap.add_argument("--report-from", metavar="JSON",
                    help="run nothing: re-render the .md/.png (and BENCHMARKS.md) of that run")
    args = ap.parse_args()
    APP_BEFORE = args.app_before
    if args.report_from:
        report_from(args.report_from)
        return
    defaults = {"full": 1_000_000, "quick": 100_000, "produce": 1_000_000, "consume": 1_000_000}
    args.rows = args.rows or defaults[args.mode]
    if args.mode == "full":
        scale_rows = [int(x) for x in (args.scale_rows or "100000,1000000,5000000").split(",")]
        partitions = [int(x) for x in (args.partitions or "1,3,6").split(",")]
    elif args.mode == "quick":
        scale_rows = [int(x) for x in (args.scale_rows or str(args.rows)).split(",")]
        partitions = [int(x) for x in (args.partitions or "1,3").split(",")]
    elif args.mode == "produce":
        scale_rows = []
        partitions = [int(x) for x in (args.partitions or "1,3,6").split(",")]
    else:
        scale_rows, partitions = [], []
    systems = set(PRODUCERS + CONSUMERS) if args.systems == "all" else set(args.systems.split(","))
    global REPEAT
    REPEAT = args.repeat or (3 if args.mode == "full" else 1)
    args.repeat = REPEAT

    for need, hint in ((APP, "cargo build --release --bin app"),
                       (GEN, "cargo build --release --example gen_data")):
        if not need.exists():
            raise SystemExit(f"bench: {need} is missing; run `{hint}` (scripts/bench.sh does)")
    started = dt.datetime.now(dt.timezone.utc)
    run_dir = WORK / started.strftime("%Y%m%dT%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    log(f"mode {args.mode}, {args.rows:,} rows, work dir {run_dir.relative_to(ROOT)}")
    info = machine()
    results, topics = [], []
    try:
        if args.mode in ("full", "quick", "produce", "consume"):
            produce_systems = systems if args.mode != "consume" else {"app"}
            topic, payload = produce_step(run_dir, args.rows, produce_systems, topics, results)
            if args.mode == "consume":
                # The topic is only the input here; its produce figures are not the point.
                for r in results:
                    r["step"] = "consume-input"
        if args.mode in ("full", "quick", "consume"):
            if args.consume_rows:
                sizes = [int(x) for x in args.consume_rows.split(",")]
            elif args.mode in ("full", "consume"):
                sizes = sorted({args.rows, 5_000_000})
            else:
                sizes = [args.rows]
            for n in sizes:
                if n == args.rows:
                    consume_step(run_dir, n, systems, topic, payload, results)
                    continue
                # A topic of n records, produced by app (not timed as a result).
                data_dir, _ = dataset(n)
                t = f"bench-{uuid.uuid4().hex[:8]}-consume-{n}"
                topics.append(t)
                app_produce(run_dir, t, data_dir, n, 1, f"consume-input-{n}")
                consume_step(run_dir, n, systems, t, payload * n // args.rows, results)
        if args.mode in ("full", "quick"):
            # The side-by-side app runs are also the (rows, 1 partition) scaling points.
            for r in list(results):
                if r["step"] in ("produce", "consume") and r["system"] == "app":
                    results.append(dict(r, step="scaling-" + r["step"], partitions=1))
        if args.mode == "produce":
            produce_partitions_step(run_dir, args.rows, systems, partitions, topics, results)
        elif scale_rows or partitions:
            scaling_step(run_dir, scale_rows, partitions, args.rows, topics, results)
    finally:
        if not args.keep:
            delete_topics(topics)
    info["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    finished = dt.datetime.now(dt.timezone.utc)
    write_outputs(results, info, args, started, finished)
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)


def write_outputs(results, info, args, started, finished):
    """bench/results/<name>.{md,json,png}, and BENCHMARKS.md's latest section in full mode."""
    stamp = started.strftime("%Y-%m-%d")
    report = render(results, info, args, started, finished)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = stamp if args.mode == "full" else f"{stamp}-{args.mode}"
    md, js, png = RESULTS / f"{name}.md", RESULTS / f"{name}.json", RESULTS / f"{name}.png"
    chart([r for r in results if r["step"] != "consume-input"], png,
          f"reclamacoes benchmarks, {stamp}, {info.get('cores')} cores, mode {args.mode}")
    md.write_text(f"# Benchmark results {stamp} ({args.mode})\n\n![chart]({png.name})\n\n"
                  f"{report}\n\nRaw figures: [{js.name}]({js.name}).\n")
    js.write_text(json.dumps({"machine": info, "args": vars(args), "started": started.isoformat(),
                              "finished": finished.isoformat(), "results": results},
                             indent=1, default=str) + "\n")
    print("\n" + report)
    log(f"wrote {md.relative_to(ROOT)}, {js.name}, {png.name}")
    if args.mode == "full" and not args.no_update:
        update_benchmarks_md(report, md, png)


def report_from(path):
    """Re-renders the outputs of an earlier run from its JSON (after a change to the report)."""
    data = json.loads(Path(path).read_text())
    args = argparse.Namespace(**data["args"])
    started = dt.datetime.fromisoformat(data["started"])
    finished = dt.datetime.fromisoformat(data["finished"])
    write_outputs(data["results"], data["machine"], args, started, finished)

if __name__ == "__main__":
    main()
