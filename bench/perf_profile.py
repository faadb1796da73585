"""CPU profiles of `app produce` and `app consume` with perf (software cpu-clock event: hardware
counters are not available in this VM), DWARF call graphs from the release binary's line tables.

    python bench/perf_profile.py [--rows 200000]      (scripts/bench.sh profile [ROWS] installs perf)

Writes bench/results/<date>-profile.md: per command, the share of all CPU samples inside each
stage of our pipeline (inclusive: the function and everything it calls) and the top functions
by their own samples. BENCHMARKS.md interprets it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

# (label, regex on the symbol) for the inclusive table; the first match per label is used.
STAGES = {
    "produce": [
        ("reader thread: split_files (read, cut into chunks)", r"^reclamacoes::produce::split_files$"),
        ("workers: ChunkEncoder::encode (everything below)", r"^reclamacoes::encode::ChunkEncoder::encode$"),
        ("  CSV: quoted lines through the csv crate", r"^csv_core::reader::Reader::read_record$"),
        ("  typed cells: Schema::parse_cell_ref", r"^reclamacoes::schema::Schema::parse_cell_ref$"),
        ("  JSON values: push_cell_json", r"^reclamacoes::schema::push_cell_json$"),
        ("    JSON string escaping: push_json_str", r"^reclamacoes::schema::push_json_str$"),
        ("collector: produce::run", r"^reclamacoes::produce::run::\{\{closure\}\}$"),
        ("senders: send_batches (records, encode, compress, I/O)", r"^reclamacoes::produce::send_batches::\{\{closure\}\}$"),
        ("  records from segments: Segment::write_kafka_records", r"^reclamacoes::encode::Segment::write_kafka_records$"),
        ("  LZ4 compression (lz4 frame)", r"^LZ4_compress"),
        ("  LZ4 frame checksum (XXH32)", r"^XXH32_update$"),
        ("  CRC32C of the batch", r"crc32c"),
    ],
    "consume": [
        ("records: FetchedRecords::read_into (decompress, read in place)", r"^reclamacoes::consume::fetched::FetchedRecords::read_into"),
        ("  LZ4 decompression", r"^LZ4_decompress"),
        ("decode: Decoder::decode (JSON -> Arrow columns, enrichment)", r"^reclamacoes::consume::decode::Decoder::decode$"),
        ("  JSON parsing and typing: Decoder::parse", r"^reclamacoes::consume::decode::Decoder::parse$"),
        ("process: PartitionPipeline::process (route, encode row groups)", r"^reclamacoes::consume::pipeline::PartitionPipeline::process$"),
        ("  Arrow -> Parquet: ArrowWriter::write", r"^parquet::arrow::arrow_writer::ArrowWriter<.*>::write$"),
        ("  zstd compression", r"^ZSTD_compress"),
        ("checkpoint: PartitionPipeline::checkpoint", r"^reclamacoes::consume::pipeline::PartitionPipeline::checkpoint$"),
        ("memory: malloc/free", r"^(_int_malloc|_int_free|malloc|cfree.*|realloc)$"),
    ],
}
# perf report --stdio lines: "  51.85%  0.00%  [.] symbol   -   -" (children) or
# "  11.25%  [.] symbol   -   -" (self); the trailing dashes are empty srcline columns.
LINE = re.compile(r"^\s+([\d.]+)%\s+([\d.]+)%\s+\[[.k]\]\s+(.*?)(?:\s+-\s+-)?\s*$")
SELF_LINE = re.compile(r"^\s+([\d.]+)%\s+\[([.k])\]\s+(.*?)(?:\s+-\s+-)?\s*$")


def perf_record(data, cmd, cwd):
    r = subprocess.run(["perf", "record", "-e", "cpu-clock", "-F", "1999", "-g",
                        "--call-graph", "dwarf,16384", "-o", str(data), "--", *map(str, cmd)],
                       cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"profile: perf record failed ({r.returncode}): {r.stderr[-2000:]}\n"
                         "Check `perf stat -e cpu-clock true` works (kernel.perf_event_paranoid)")
    return r.stdout


def report(data, children):
    args = ["perf", "report", "-i", str(data), "--stdio", "-g", "none", "--sort", "symbol",
            "--children" if children else "--no-children"]
    return subprocess.run(args, capture_output=True, text=True).stdout




def analyse(name, data):
    inclusive = {}
    for ln in report(data, True).splitlines():
        m = LINE.match(ln)
        if m:
            inclusive.setdefault(m.group(3), float(m.group(1)))
    rows = []
    for label, pattern in STAGES[name]:
        rx = re.compile(pattern)
        hit = next(((sym, pct) for sym, pct in inclusive.items() if rx.search(sym)), None)
        rows.append((label, hit[1] if hit else None))
    top = []
    for ln in report(data, False).splitlines():
        m = SELF_LINE.match(ln)
        if m:
            sym = m.group(3)
            top.append((float(m.group(1)), ("[kernel] " if m.group(2) == "k" else "") + sym))
        if len(top) >= 15:
            break
    return rows, top


def short(sym, n=110):
    return sym if len(sym) <= n else sym[: n - 1] + "…"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--only", choices=["produce", "consume"], help="profile one command")
    a = ap.parse_args()
    if shutil.which("perf") is None:
        raise SystemExit("profile: perf is missing; apt-get install linux-perf")
    data_dir, _ = bench.dataset(a.rows)
    work = bench.WORK / f"profile-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    topic = f"bench-{uuid.uuid4().hex[:8]}-profile"
    sections = []
    try:
        bench.create_topic(topic, 1)
        runs = {
            "produce": [bench.APP, "produce", "--brokers", bench.BROKERS, "--topic", topic,
                        "--rejects", work / "rejects", data_dir],
            "consume": [bench.APP, "consume", "--brokers", bench.BROKERS, "--topic", topic,
                        "--mysql-url", bench.MYSQL_URL, "--output", work / "output",
                        "--until-caught-up"],
        }
        for name, cmd in runs.items():
            if a.only and name != a.only:
                if name == "produce":
                    # consume profiles a filled topic: produce it, unprofiled
                    subprocess.run(list(map(str, cmd)), cwd=work, check=True, capture_output=True)
                continue
            data = work / f"{name}.perf.data"
            bench.log(f"perf record: app {name} ({a.rows:,} rows)")
            out = perf_record(data, cmd, work)
            summary = next((ln.strip() for ln in out.splitlines() if ln.strip().startswith("time:")), "")
            rows, top = analyse(name, data)
            lines = [f"### app {name}, {a.rows:,} records ({summary})", "",
                     "| stage (inclusive) | % of CPU samples |", "|---|---:|"]
            for label, pct in rows:
                lines.append(f"| {label.replace('  ', '&nbsp;&nbsp;')} | "
                             f"{'–' if pct is None else f'{pct:.1f}'} |")
            lines += ["", "Top functions by own samples:", "", "| % | function |", "|---:|---|"]
            lines += [f"| {pct:.1f} | `{short(sym)}` |" for pct, sym in top]
            sections.append("\n".join(lines) + "\n")
    finally:
        bench.delete_topics([topic])
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    out = bench.RESULTS / f"{stamp}-profile{'-' + a.only if a.only else ''}.md"
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(
        f"# CPU profile {stamp}\n\n`perf record -e cpu-clock -F 1999 -g --call-graph dwarf` of "
        f"the release `app` (line-table debug info), {a.rows:,} generated rows, 1 partition, "
        f"shared broker. Percentages are of all CPU samples of the process (all threads).\n\n"
        + "\n".join(sections))
    print("\n".join(sections))
    bench.log(f"wrote {out.relative_to(bench.ROOT)}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
