"""The seed's consumer design, as a baseline: PySpark Structured Streaming, Kafka -> Parquet.

    python bench/spark_consumer.py --brokers 127.0.0.1:9092 --topic T --output DIR \
        --jars-dir .local/bench-jars [--jdbc-url jdbc:mysql://127.0.0.1:3306/reclamacoes_db]

The same job as `app consume --until-caught-up`, written the way the seed wrote it:
- readStream from Kafka (startingOffsets earliest), the value parsed with from_json and the
  explicit schema of the JSON that `app produce` writes (typed fields + `_source`);
- event time = the Kafka record timestamp, withWatermark 10 seconds (app's --allowed-lateness)
  and a tumbling 1-minute window() giving window_start / window_end, like app's output columns;
- enrichment: table `bancos` read once over JDBC (MySQL Connector/J), left join on
  cnpj_if = cnpj with broadcast() (the usual idiom for a small dimension table), adding
  banco_segmento and banco_nome;
- Parquet sink (append, partitionBy window_start, like app's window_start=... folders), a
  checkpoint location, and trigger(availableNow=True) so the query stops once it has read
  everything that was in the topic when it started.
Parquet compression zstd, as app consume's default. The watermark only matters to stateful operators; in this stateless query (as in the seed) it
drops nothing. `minPartitions` = local cores so both cores work even on a one-partition topic.
Prints one JSON line: rows read (from the query progress) and seconds.
"""

import argparse
import glob
import json
import os
import re
import time


def extra_jars(jars_dir: str, pyspark_jars: str):
    """Jars of jars_dir whose artifact is not already in pyspark's own jars/ (no duplicates)."""
    def artifact(path):
        return re.sub(r"-\d[\w.\-]*\.jar$", "", os.path.basename(path))

    have = {artifact(p) for p in glob.glob(os.path.join(pyspark_jars, "*.jar"))}
    jars = [p for p in sorted(glob.glob(os.path.join(jars_dir, "*.jar"))) if artifact(p) not in have]
    if not any("spark-sql-kafka" in p for p in jars):
        raise SystemExit(f"spark_consumer: no spark-sql-kafka jar in {jars_dir}; run scripts/bench.sh setup")
    return jars


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", default="127.0.0.1:9092")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--jars-dir", required=True)
    ap.add_argument("--jdbc-url", default="jdbc:mysql://127.0.0.1:3306/reclamacoes_db")
    ap.add_argument("--jdbc-user", default="reclamacoes")
    ap.add_argument("--jdbc-password", default="reclamacoes")
    ap.add_argument("--driver-memory", default="2g")
    a = ap.parse_args()
    t0 = time.monotonic()

    import pyspark
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    jars = extra_jars(a.jars_dir, os.path.join(os.path.dirname(pyspark.__file__), "jars"))
    cores = os.cpu_count() or 1
    spark = (
        SparkSession.builder.master(f"local[{cores}]")
        .appName("reclamacoes-seed-baseline")
        .config("spark.jars", ",".join(jars))
        .config("spark.driver.memory", a.driver_memory)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        # zstd like app consume's default (and snappy-java's native loader can misdetect musl).
        .config("spark.sql.parquet.compression.codec", "zstd")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")

    count = T.LongType()
    schema = T.StructType([
        T.StructField("ano", T.LongType()),
        T.StructField("trimestre", T.LongType()),
        T.StructField("categoria", T.StringType()),
        T.StructField("tipo", T.StringType()),
        T.StructField("cnpj_if", T.StringType()),
        T.StructField("instituicao_financeira", T.StringType()),
        T.StructField("indice", T.DoubleType()),
        T.StructField("quantidade_de_reclamacoes_reguladas_procedentes", count),
        T.StructField("quantidade_de_reclamacoes_reguladas_outras", count),
        T.StructField("quantidade_de_reclamacoes_nao_reguladas", count),
        T.StructField("quantidade_total_de_reclamacoes", count),
        T.StructField("quantidade_total_de_clientes_ccs_e_scr", count),
        T.StructField("quantidade_de_clientes_ccs", count),
        T.StructField("quantidade_de_clientes_scr", count),
        T.StructField("_source", T.StructType([
            T.StructField("file", T.StringType()),
            T.StructField("line", T.LongType()),
        ])),
    ])

    bancos = (
        spark.read.format("jdbc")
        .option("url", a.jdbc_url)
        .option("dbtable", "bancos")
        .option("user", a.jdbc_user)
        .option("password", a.jdbc_password)
        .option("driver", "com.mysql.cj.jdbc.Driver")
        .load()
        .select(
            F.col("cnpj"),
            F.col("segmento").alias("banco_segmento"),
            F.col("nome").alias("banco_nome"),
        )
    )

    raw = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", a.brokers)
        .option("subscribe", a.topic)
        .option("startingOffsets", "earliest")
        .option("minPartitions", str(cores))
        .option("failOnDataLoss", "true")
        .load()
    )
    records = raw.select(
        F.from_json(F.col("value").cast("string"), schema).alias("r"),
        F.col("partition").alias("kafka_partition"),
        F.col("offset").alias("kafka_offset"),
        F.col("timestamp").alias("kafka_timestamp"),
    ).select("r.*", "kafka_partition", "kafka_offset", "kafka_timestamp")
    windowed = (
        records.withWatermark("kafka_timestamp", "10 seconds")
        .withColumn("w", F.window("kafka_timestamp", "1 minute"))
        .withColumn("window_start", F.col("w.start"))
        .withColumn("window_end", F.col("w.end"))
        .drop("w")
    )
    enriched = windowed.join(
        F.broadcast(bancos), windowed.cnpj_if == bancos.cnpj, "left"
    ).drop("cnpj")

    query = (
        enriched.writeStream.format("parquet")
        .option("path", a.output)
        .option("checkpointLocation", os.path.join(a.output, "_checkpoint"))
        .partitionBy("window_start")
        .outputMode("append")
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    rows = sum(p.get("numInputRows", 0) for p in query.recentProgress)
    spark.stop()
    print(json.dumps({"rows": rows, "seconds": round(time.monotonic() - t0, 3),
                      "spark": pyspark.__version__}))


if __name__ == "__main__":
    main()
