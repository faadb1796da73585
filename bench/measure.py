"""Runs one command and measures it: wall time, CPU seconds, peak memory, time to first output.

Used by bench/bench.py (import) and usable alone:

    python bench/measure.py [--watch DIR --pattern '**/*.parquet'] [--json OUT] -- CMD ARGS...

What is measured, and how:
- wall: from just before the fork to the moment the last process of the command's session ended
  (the leader's exit, unless it left processes behind; checked every 20 ms).
- cpu_user / cpu_sys: the larger of (a) wait4()'s rusage of the command (the leader plus every
  descendant it waited for; what `/usr/bin/time -v` prints) and (b) the sum over every process of
  the session of its last sampled utime/stime from /proc (catches descendants nobody waited for,
  e.g. the JVM that PySpark starts).
- max_rss_single: wait4()'s ru_maxrss, the "Maximum resident set size" of `/usr/bin/time -v`
  (the largest single process it saw).
- peak_rss_tree: the peak of the summed RSS of every process in the command's session (it runs
  in a new session), sampled every 20 ms for the first 2 s and every 200 ms after that. This is
  what counts for PySpark (python + JVM). It is never below the largest VmHWM (the kernel's own
  peak RSS of a process, /proc/PID/status) sampled from a process after its exec, so a single
  process (app, kcat) gets its exact peak even when it is short-lived or peaks between samples.
  (ru_maxrss cannot serve: a child's starts from this harness's RSS at fork.)
- first_output_s: seconds from start until a file matching --pattern first appeared under
  --watch (sampled every 200 ms too).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_S = 0.2
SAMPLE_FAST_S = 0.02
FAST_FOR_S = 2.0


def _comm(pid) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
        return data[data.index("(") + 1 : data.rindex(")")]
    except (OSError, ValueError):
        return ""


# A child that has not exec'd yet is a copy of this harness (same comm, same pages).
HARNESS_COMM = _comm("self")


def _hwm(pid: int):
    """VmHWM (peak RSS, bytes) of a process that has exec'd, or None."""
    if _comm(pid) == HARNESS_COMM:
        return None
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _stat(pid: int):
    """(session id, utime+stime split, rss bytes) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
        # comm may hold spaces or parentheses: split after the last ')'.
        rest = data[data.rindex(")") + 2 :].split()
        session = int(rest[3])
        utime, stime = int(rest[11]) / TICKS, int(rest[12]) / TICKS
        rss = int(rest[21]) * PAGE
        return session, utime, stime, rss
    except (OSError, ValueError, IndexError):
        return None


def _session_members(sid: int):
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = _stat(int(name))
        if st and st[0] == sid:
            out[int(name)] = st
    return out


def measure(cmd, *, cwd=None, env=None, stdout=None, stderr=None, watch=None,
            pattern="**/*.parquet", timeout=None, stdin=subprocess.DEVNULL):
    """Runs `cmd` in a new session and returns a dict of measurements (see module docs).

    stdout/stderr: file paths (str) or None (discarded). Raises nothing for a failing command:
    look at `rc`.
    """
    # Write back what earlier runs left dirty in the page cache before the clock starts. Left
    # dirty, it was written back during the next run: the broker's metadata fsync then waited
    # on it for 1-3 s (server.log: "writeNoOpRecord ... took 1349 ms"), and whichever system
    # was running stalled (1M rows in 3-10 s instead of 1.3-1.7 s, at the same CPU seconds).
    os.sync()
    out_f = open(stdout, "wb") if stdout else subprocess.DEVNULL
    err_f = open(stderr, "wb") if stderr else subprocess.DEVNULL
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out_f, stderr=err_f, stdin=stdin,
                            start_new_session=True)
    sid = proc.pid
    state = {"peak": 0, "hwm": 0, "cpu": {}, "first": None, "samples": 0}
    done = threading.Event()

    def sample():
        while True:
            members = _session_members(sid)
            total = sum(st[3] for st in members.values())
            state["peak"] = max(state["peak"], total)
            for pid, st in members.items():
                state["cpu"][pid] = (st[1], st[2])
                state["hwm"] = max(state["hwm"], _hwm(pid) or 0)
            state["samples"] += 1
            if watch and state["first"] is None and glob.glob(os.path.join(watch, pattern),
                                                              recursive=True):
                state["first"] = time.monotonic() - t0
            if done.is_set() and not members:
                return
            time.sleep(SAMPLE_FAST_S if time.monotonic() - t0 < FAST_FOR_S else SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    timed_out = False
    if timeout:
        def kill_on_timeout():
            if not done.wait(timeout):
                nonlocal timed_out
                timed_out = True
                try:
                    os.killpg(sid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        threading.Thread(target=kill_on_timeout, daemon=True).start()
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    t_leader = time.monotonic() - t0
    done.set()
    # Wait (bounded) for processes the leader left behind in its session, then end them.
    wall = t_leader
    deadline = time.monotonic() + 30
    while _session_members(sid) and time.monotonic() < deadline:
        time.sleep(0.02)
        wall = time.monotonic() - t0
    if _session_members(sid):
        try:
            os.killpg(sid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    sampler.join(timeout=5)
    for f in (out_f, err_f):
        if f is not subprocess.DEVNULL:
            f.close()
    sampled_user = sum(u for u, _ in state["cpu"].values())
    sampled_sys = sum(s for _, s in state["cpu"].values())
    if ru.ru_utime + ru.ru_stime >= sampled_user + sampled_sys:
        user, sys_ = ru.ru_utime, ru.ru_stime
    else:
        user, sys_ = sampled_user, sampled_sys
    if watch and state["first"] is None and glob.glob(os.path.join(watch, pattern), recursive=True):
        state["first"] = wall
    if state["first"] is not None:
        # The sampler may notice the file only after the command ended.
        state["first"] = min(state["first"], wall)
    return {
        "cmd": [str(c) for c in cmd],
        "rc": proc.returncode,
        "timed_out": timed_out,
        "wall_s": round(wall, 3),
        "leader_wall_s": round(t_leader, 3),
        "cpu_user_s": round(user, 2),
        "cpu_sys_s": round(sys_, 2),
        "max_rss_single_mb": round(ru.ru_maxrss / 1024, 1),
        "peak_rss_tree_mb": round(max(state["peak"], state["hwm"]) / 2**20, 1),
        "peak_rss_sampled_mb": round(state["peak"] / 2**20, 1),
        "peak_rss_hwm_mb": round(state["hwm"] / 2**20, 1),
        "first_output_s": None if state["first"] is None else round(state["first"], 2),
        "samples": state["samples"],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--watch", help="directory to watch for the first output file")
    ap.add_argument("--pattern", default="**/*.parquet")
    ap.add_argument("--json", help="write the measurements here (default: stdout)")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        ap.error("give a command after --")
    m = measure(cmd, watch=a.watch, pattern=a.pattern, stdout="/dev/stdout", stderr="/dev/stderr")
    text = json.dumps(m, indent=2)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    else:
        print(text, file=sys.stderr)
    sys.exit(m["rc"] if m["rc"] >= 0 else 128 - m["rc"])


if __name__ == "__main__":
    main()
