"""Runs N `app consume --group` instances over one topic until the shared output has committed
every record, then stops them with SIGTERM and waits for each to exit 0. bench/group.py measures
this script with bench/measure.py, so wall time, CPU and peak RSS cover all N instances (they
run in its session).

    python bench/group_run.py APP N TOPIC GROUP OUTDIR ROWS LOGDIR -- [extra consume args]

Prints `committed_s=<seconds from start until everything was committed>`.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def committed(outdir: Path) -> int:
    """Sum over partitions of the newest checkpoint's next_offset (layout 2, local output)."""
    total = 0
    for pdir in (outdir / "_checkpoint").glob("partition=*"):
        newest = None
        for f in pdir.glob("*.json"):
            try:
                gen = int(f.stem.split("-")[-1]) if "-" in f.stem else int(f.stem)
            except ValueError:
                continue
            if newest is None or gen > newest[0]:
                newest = (gen, f)
        if newest is None:
            continue
        try:
            cp = json.loads(newest[1].read_text())
        except (OSError, ValueError):
            continue  # being replaced; the next poll reads it
        total += max(cp.get("checkpoint", cp).get("next_offset", 0), 0)
    return total


def main():
    args = sys.argv[1:]
    extra = args[args.index("--") + 1:] if "--" in args else []
    app, n, topic, group, outdir, rows, logdir = args[:7]
    n, rows, outdir, logdir = int(n), int(rows), Path(outdir), Path(logdir)
    start = time.monotonic()
    members = []
    for i in range(n):
        err = open(logdir / f"group-{n}-member-{i}.err", "w")
        cmd = [app, "consume", "--topic", topic, "--group", group, "--output", str(outdir),
               "--status-interval", "5s", *extra]
        members.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err))
    try:
        while committed(outdir) < rows:
            for m in members:
                if m.poll() is not None:
                    sys.exit(f"group_run: a member exited with {m.returncode} before the end; "
                             f"see {logdir}")
            time.sleep(0.05)
        committed_s = time.monotonic() - start
    finally:
        for m in members:
            if m.poll() is None:
                m.send_signal(signal.SIGTERM)
    codes = [m.wait(timeout=120) for m in members]
    if any(codes):
        sys.exit(f"group_run: members exited with {codes}; see {logdir}")
    print(f"committed_s={committed_s:.3f}")


if __name__ == "__main__":
    main()
