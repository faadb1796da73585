"""Reads a Delta Lake table with three independent readers and prints what each one saw.

The Rust integration tests run it with the pinned venv of scripts/python-env.sh:

    .local/venv/bin/python tests/delta_readers.py <table-uri> [--version N]

<table-uri> is a local directory or s3://bucket/prefix. For S3 the endpoint and credentials come
from the environment (`scripts/s3.sh env` prints them): AWS_ENDPOINT_URL (plain http, e.g.
http://127.0.0.1:7070, path-style requests), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
AWS_REGION (default us-east-1).

The readers: python `deltalake` (delta-rs), `polars.read_delta` (it resolves the log with the
deltalake package but reads the Parquet files itself) and DuckDB's delta extension (delta-kernel-rs,
shipped by the duckdb-ext-delta wheel): `delta_scan('<uri>')` for the latest snapshot, and with
--version an ATTACH ... (TYPE delta) read `AT (VERSION => N)`, as delta_scan takes no version.

With --poll SECONDS it is a reader that keeps reading while writers run: every SECONDS it opens
the latest snapshot afresh with deltalake, reads (kafka_partition, kafka_offset) and prints one
JSON line {"version": v, "rows": n, "duplicates": d} (or {"error": "..."} when the read fails,
e.g. before the table exists), until it is killed.

Otherwise it prints one JSON object on stdout:

    {"deltalake": {"rows": n, "duplicates": d, "version": v}, "polars": {...}, "duckdb": {...},
     "history": [{"version": v, "operation": "WRITE"}, ...], "files": f}

duplicates = rows - distinct (kafka_partition, kafka_offset) pairs. `version` is the snapshot
version the reader read: deltalake reports it; polars and DuckDB do not say which version is
the latest, so theirs is N with --version (both fail on a version that does not exist) and null
without. `history` is deltalake's DeltaTable.history() of the latest snapshot, oldest first;
`files` is the number of data files in the snapshot read (deltalake's file_uris()). Any reader
failing (a missing table or version too): exit 1 with the reader's name and its error on stderr.
"""

import argparse
import json
import os
import sys
import traceback
from urllib.parse import urlparse

KEY = ("kafka_partition", "kafka_offset")


def s3_settings():
    """Endpoint, credentials and region from the environment (plain http, path-style)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    if not endpoint:
        sys.exit("delta_readers: AWS_ENDPOINT_URL is not set (for s3:// tables; see `scripts/s3.sh env`)")
    return {
        "endpoint": endpoint,
        "key_id": os.environ.get("AWS_ACCESS_KEY_ID", ""),
        "secret": os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
        "region": os.environ.get("AWS_REGION") or "us-east-1",
    }


def storage_options(s3):
    """object_store options for deltalake and polars (both hand them to delta-rs/object_store)."""
    if s3 is None:
        return None
    return {
        "AWS_ENDPOINT_URL": s3["endpoint"],
        "AWS_ACCESS_KEY_ID": s3["key_id"],
        "AWS_SECRET_ACCESS_KEY": s3["secret"],
        "AWS_REGION": s3["region"],
        "AWS_ALLOW_HTTP": "true",
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false",
    }


def read_deltalake(uri, version, s3):
    from deltalake import DeltaTable

    dt = DeltaTable(uri, storage_options=storage_options(s3), version=version)
    t = dt.to_pyarrow_table()  # every column: each reader decodes the whole table
    distinct = t.group_by(list(KEY)).aggregate([]).num_rows
    # The history of the latest snapshot: deltalake 1.6.6's history() of a table loaded at an
    # older version lists the later commits too, numbered down from the loaded version (-1, 0).
    latest = dt if version is None else DeltaTable(uri, storage_options=storage_options(s3))
    history = sorted(
        ({"version": h["version"], "operation": h.get("operation")} for h in latest.history()),
        key=lambda h: h["version"],
    )
    result = {"rows": t.num_rows, "duplicates": t.num_rows - distinct, "version": dt.version()}
    return result, history, len(dt.file_uris())


def read_polars(uri, version, s3):
    import polars as pl

    df = pl.read_delta(uri, version=version, storage_options=storage_options(s3))
    distinct = df.unique(subset=list(KEY)).height
    return {"rows": df.height, "duplicates": df.height - distinct, "version": version}


def read_duckdb(uri, version, s3):
    import duckdb
    import duckdb_ext

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")  # stdout is the answer
    # The extensions come from the duckdb-ext-* wheels: DuckDB cannot download them here.
    con.execute("SET extension_directory = ?", [os.path.join(list(duckdb_ext.__path__)[0], "extensions")])
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("LOAD delta")
    if s3 is not None:
        con.execute("LOAD httpfs")
        host = urlparse(s3["endpoint"]).netloc  # DuckDB wants host:port, no scheme
        # CREATE SECRET takes no prepared parameters: quoted literals.
        con.execute(
            "CREATE SECRET (TYPE s3, KEY_ID {}, SECRET {}, REGION {}, ENDPOINT {}, URL_STYLE 'path', USE_SSL false)".format(
                *(sql_string(v) for v in (s3["key_id"], s3["secret"], s3["region"], host))
            )
        )
    if version is None:
        source = f"delta_scan({sql_string(uri)})"
    else:
        # delta_scan has no version parameter; an attached Delta table takes AT (VERSION => N).
        con.execute(f"ATTACH {sql_string(uri)} AS delta_table (TYPE delta)")
        source = f"delta_table AT (VERSION => {int(version)})"
    rows, distinct = con.execute(
        f"SELECT count(*), count(DISTINCT ({KEY[0]}, {KEY[1]})) FROM {source}"
    ).fetchone()
    return {"rows": rows, "duplicates": rows - distinct, "version": version}


def poll(uri, s3, interval):
    """The polling reader of --poll (see the module docs)."""
    import time
    from deltalake import DeltaTable

    while True:
        try:
            dt = DeltaTable(uri, storage_options=storage_options(s3))
            t = dt.to_pyarrow_table(columns=list(KEY))
            distinct = t.group_by(list(KEY)).aggregate([]).num_rows
            line = {"version": dt.version(), "rows": t.num_rows, "duplicates": t.num_rows - distinct}
        except Exception as e:  # noqa: BLE001 - reported, the caller decides
            line = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(line), flush=True)
        time.sleep(interval)


def sql_string(s):
    return "'" + str(s).replace("'", "''") + "'"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("uri", help="a local directory or s3://bucket/prefix")
    ap.add_argument("--version", type=int, default=None, help="read this table version (default: the latest)")
    ap.add_argument("--poll", type=float, default=None, metavar="SECONDS",
                    help="keep reading the latest snapshot every SECONDS, one JSON line each")
    args = ap.parse_args()
    uri = args.uri.rstrip("/") if args.uri.startswith("s3://") else os.path.abspath(args.uri)
    s3 = s3_settings() if uri.startswith("s3://") else None
    if args.poll is not None:
        poll(uri, s3, args.poll)

    out, extra = {}, {}
    for name, read in [("deltalake", read_deltalake), ("polars", read_polars), ("duckdb", read_duckdb)]:
        try:
            out[name] = read(uri, args.version, s3)
        except Exception as e:  # noqa: BLE001 - every failure is reported with the reader's name
            at = uri if args.version is None else f"{uri} version {args.version}"
            print(f"delta_readers: {name} failed on {at}: {type(e).__name__}: {e}", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            quit_now(1)
        if name == "deltalake":
            out[name], extra["history"], extra["files"] = out[name]
    out.update(extra)
    print(json.dumps(out))
    quit_now(0)


def quit_now(code):
    """Exit without the interpreter's shutdown: after deltalake's to_pyarrow_table() on S3, about
    1 run in 20 aborted there with `terminate called without an active exception` (a pyarrow
    thread still calling into the Python filesystem handler; cf. delta-io/delta-rs#2184)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
