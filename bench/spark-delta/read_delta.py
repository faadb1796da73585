"""Reads a Delta table written by `app consume` with Apache Spark + Delta Lake (delta-spark).

A hand check that a JVM Delta reader accepts our table (protocol, log, checkpoint, stats,
timestamp type), not a test the CI runs. See README.md beside this file for the whole recipe:

    # the Delta jars (Spark cannot download packages here, so no --packages):
    mvn -q -f bench/spark-delta/pom.xml dependency:copy-dependencies \
        -DoutputDirectory=/tmp/spark-delta/jars -DincludeScope=runtime -DincludeGroupIds=io.delta
    # pyspark 4.2.0 of the bench venv (scripts/bench.sh), Java 17:
    .local/bench-venv/bin/python bench/spark-delta/read_delta.py /tmp/spark-delta/table \
        --jars-dir /tmp/spark-delta/jars [--version-as-of 1] [--partition 1]

Versions known to work together: pyspark 4.2.0 + io.delta:delta-spark_4.2_2.13:4.4.0
(+ delta-storage 4.4.0). Spark runs with master local[1] and the Delta session extension and
catalog. Prints, then one JSON line with the numbers:
- the schema (and fails unless window_start is a TimestampType),
- rows and distinct (kafka_partition, kafka_offset) of the latest snapshot,
- DESCRIBE HISTORY and DESCRIBE DETAIL,
- rows at versionAsOf N (time travel),
- rows of `WHERE kafka_partition = P` and how many data files the scan read out of the
  snapshot's files (Delta's data skipping on the min/max stats of the add actions), and the
  same with spark.databricks.delta.stats.skipping=false as a control (reads them all).
Exits 1 on a failed check (wrong type, duplicates, a filter returning another partition's rows).
"""

import argparse
import glob
import json
import os
import sys


def delta_jars(jars_dir):
    """delta-spark and delta-storage of jars_dir: all a read needs (the delta-kernel-* jars that
    the pom also resolves are not needed for this table, and pyspark brings the rest)."""
    spark = sorted(glob.glob(os.path.join(jars_dir, "delta-spark_*.jar")))
    storage = sorted(glob.glob(os.path.join(jars_dir, "delta-storage-*.jar")))
    if len(spark) != 1 or len(storage) != 1:
        sys.exit(f"read_delta: want one delta-spark_*.jar and one delta-storage-*.jar in {jars_dir},"
                 f" found {spark + storage}; run the mvn command of the docstring")
    return spark + storage


def scan_metrics(df):
    """SQL metrics of the file scan(s) of df's executed plan (run df first; AQE is off)."""
    plan = df._jdf.queryExecution().executedPlan()
    leaves = plan.collectLeaves()
    out = []
    for i in range(leaves.size()):
        node = leaves.apply(i)
        metrics = node.metrics()
        keys = metrics.keys().toList()
        m = {}
        for k in range(keys.size()):
            key = keys.apply(k)
            m[key] = metrics.apply(key).value()
        out.append({"node": node.nodeName(), "metrics": m})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("table", help="the Delta table's directory")
    ap.add_argument("--jars-dir", default="/tmp/spark-delta/jars")
    ap.add_argument("--version-as-of", type=int, default=1)
    ap.add_argument("--partition", type=int, default=1, help="kafka_partition for the filter")
    args = ap.parse_args()
    path = os.path.abspath(args.table)

    from pyspark.sql import SparkSession, functions as F
    from pyspark.sql.types import TimestampType

    spark = (
        SparkSession.builder.master("local[1]")
        .appName("read_delta")
        .config("spark.jars", ",".join(delta_jars(args.jars_dir)))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.adaptive.enabled", "false")  # a plain executed plan for scan_metrics
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "1")  # 80 rows: one task per shuffle, not 200
        .config("spark.databricks.delta.snapshotPartitions", "1")  # the log replay, likewise
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    failures = []
    print(f"spark {spark.version}, delta jars: {[os.path.basename(j) for j in delta_jars(args.jars_dir)]}")

    df = spark.read.format("delta").load(path)
    df.printSchema()
    ws = df.schema["window_start"].dataType
    if not isinstance(ws, TimestampType):
        failures.append(f"window_start is {ws}, not a timestamp")

    rows = df.count()
    distinct = df.select("kafka_partition", "kafka_offset").distinct().count()
    if distinct != rows:
        failures.append(f"{rows - distinct} duplicate (kafka_partition, kafka_offset) pairs")
    print(f"rows={rows} distinct(kafka_partition, kafka_offset)={distinct}")
    df.groupBy("kafka_partition", "window_start").agg(
        F.count("*").alias("rows"), F.min("kafka_offset").alias("min_offset"), F.max("kafka_offset").alias("max_offset")
    ).orderBy("kafka_partition").show(truncate=False)

    history = spark.sql(f"DESCRIBE HISTORY delta.`{path}`")
    history.select("version", "timestamp", "operation", "operationParameters", "isBlindAppend", "engineInfo").orderBy(
        "version"
    ).show(truncate=False)
    hist = [(r["version"], r["operation"]) for r in history.orderBy("version").collect()]

    detail = spark.sql(f"DESCRIBE DETAIL delta.`{path}`").collect()[0]
    print(
        f"detail: format={detail['format']} numFiles={detail['numFiles']} sizeInBytes={detail['sizeInBytes']}"
        f" partitionColumns={detail['partitionColumns']} minReaderVersion={detail['minReaderVersion']}"
        f" minWriterVersion={detail['minWriterVersion']}"
    )

    old = spark.read.format("delta").option("versionAsOf", args.version_as_of).load(path)
    old_rows = old.count()
    print(f"versionAsOf {args.version_as_of}: rows={old_rows}")

    part = df.where(F.col("kafka_partition") == args.partition)
    part_rows = part.collect()
    others = [r for r in part_rows if r["kafka_partition"] != args.partition]
    if others:
        failures.append(f"the filter kafka_partition = {args.partition} returned {len(others)} other rows")
    metrics = scan_metrics(part)
    print(f"WHERE kafka_partition = {args.partition}: rows={len(part_rows)}; scan metrics: {metrics}")
    sql_rows = spark.sql(
        f"SELECT count(*) AS n FROM delta.`{path}` WHERE kafka_partition = {args.partition}"
    ).collect()[0]["n"]
    part.explain("formatted")
    # The control: the same filter with Delta's data skipping off reads every file of the snapshot,
    # so files_read < files above comes from the min/max stats in the log, not Parquet pruning.
    spark.conf.set("spark.databricks.delta.stats.skipping", "false")
    unskipped = spark.read.format("delta").load(path).where(F.col("kafka_partition") == args.partition)
    unskipped.collect()
    files_unskipped = next(
        (m["metrics"].get("numFiles") for m in scan_metrics(unskipped) if "numFiles" in m["metrics"]), None
    )
    spark.conf.set("spark.databricks.delta.stats.skipping", "true")

    files_read = next(
        (m["metrics"].get("numFiles") for m in metrics if "numFiles" in m["metrics"]), None
    )
    print(
        json.dumps(
            {
                "spark": spark.version,
                "rows": rows,
                "distinct": distinct,
                "window_start": ws.simpleString(),
                "history": hist,
                "files": detail["numFiles"],
                "version_as_of": {"version": args.version_as_of, "rows": old_rows},
                "partition_filter": {
                    "kafka_partition": args.partition,
                    "rows": len(part_rows),
                    "sql_count": sql_rows,
                    "files_read": files_read,
                    "files_read_without_skipping": files_unskipped,
                },
                "failures": failures,
            }
        )
    )
    spark.stop()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
