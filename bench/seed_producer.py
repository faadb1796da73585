"""The seed's producer design, as a baseline: kafka-python + csv.DictReader + json.dumps.

    python bench/seed_producer.py --brokers 127.0.0.1:9092 --topic T [--compression lz4] CSV...

Reads each CSV with csv.DictReader (encoding cp1252, delimiter ';'), sends every row as
json.dumps(row) (all values stay strings; the trailing ';' gives an extra "" column, kept as the
seed kept it) with acks='all' and the given compression (lz4 needs the `lz4` package), then
flush()es. No key and no per-send callback, like the seed; bench.py checks the topic's record
count afterwards. Prints one JSON line: rows, seconds.
`--count-bytes` sends nothing and prints the rows and the total JSON value bytes instead (run
apart, so the measured run does only the seed's work).
"""

import argparse
import csv
import json
import time

from kafka import KafkaProducer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", default="127.0.0.1:9092")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--compression", default="lz4")
    ap.add_argument("--count-bytes", action="store_true")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    if a.count_bytes:
        rows = value_bytes = 0
        for path in a.files:
            with open(path, encoding="cp1252", newline="") as f:
                for row in csv.DictReader(f, delimiter=";"):
                    rows += 1
                    value_bytes += len(json.dumps(row).encode("utf-8"))
        print(json.dumps({"rows": rows, "value_bytes": value_bytes}))
        return
    t0 = time.monotonic()
    producer = KafkaProducer(
        bootstrap_servers=a.brokers.split(","),
        acks="all",
        compression_type=None if a.compression == "none" else a.compression,
        value_serializer=lambda v: json.dumps(v).encode("utf-8"),
    )
    rows = 0
    for path in a.files:
        with open(path, encoding="cp1252", newline="") as f:
            for row in csv.DictReader(f, delimiter=";"):
                producer.send(a.topic, row)
                rows += 1
    producer.flush()
    producer.close()
    elapsed = time.monotonic() - t0
    print(json.dumps({"rows": rows, "seconds": round(elapsed, 3)}))


if __name__ == "__main__":
    main()
