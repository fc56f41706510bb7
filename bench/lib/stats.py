"""Small helpers for the bench scripts (bench/lib/common.sh): medians, ratios, parsing the
outputs of pacer, oha and wrk, and the send lag of an arrival log. Standard library only."""

import json
import re
import statistics
import sys


def nums(path):
    with open(path) as f:
        return [float(x) for x in f.read().split()]


def summary(path):
    """median min max n of the numbers in a file."""
    xs = nums(path)
    if not xs:
        print("nan nan nan 0")
        return
    print(f"{statistics.median(xs):.6g} {min(xs):.6g} {max(xs):.6g} {len(xs)}")


def fmt_cell(path, digits):
    """'median (min-max)' of a file's numbers, or 'n/a'."""
    try:
        xs = nums(path)
    except FileNotFoundError:
        xs = []
    if not xs:
        return "n/a"
    m = statistics.median(xs)
    if len(xs) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ({min(xs):.{digits}f}-{max(xs):.{digits}f})"


def cell(path, digits="0"):
    print(fmt_cell(path, int(digits)))


def ratio(a_path, b_path):
    """Ratio of medians a/b with the spread of per-round ratios (rounds alternate, so round i
    of a and round i of b ran next to each other)."""
    try:
        a, b = nums(a_path), nums(b_path)
    except FileNotFoundError:
        print("n/a")
        return
    if not a or not b:
        print("n/a")
        return
    m = statistics.median(a) / statistics.median(b)
    per = [x / y for x, y in zip(a, b) if y]
    if len(per) > 1:
        print(f"{m:.2f}x ({min(per):.2f}-{max(per):.2f})")
    else:
        print(f"{m:.2f}x")


def pacer_summary(path, field):
    """A number from pacer's --summary-json: http_reqs, ok, elapsed, checks_failed, dropped,
    send lag percentiles, duration percentiles."""
    with open(path) as f:
        s = json.load(f)
    t = s["totals"]
    if field == "http_reqs":
        v = t["http_reqs"]
    elif field == "ok":
        v = t["status"].get("200", 0)
    elif field == "elapsed":
        v = s["elapsed_secs"]
    elif field == "checks_failed":
        v = t["checks_failed"]
    elif field == "dropped":
        v = s["scenario_totals"]["dropped_iterations"]
    elif field.startswith("lag_"):
        v = t.get("send_lag_ms", {}).get(field[4:])
    elif field.startswith("dur_"):
        v = t["duration_ms"].get(field[4:])
    else:
        raise SystemExit(f"unknown field {field}")
    print("nan" if v is None else v)


def oha_json(path, field):
    """From `oha --output-format json`: requests (successful), rps, latency p50/p99/max in ms."""
    with open(path) as f:
        o = json.load(f)
    codes = o.get("statusCodeDistribution", {})
    if field == "requests":
        v = sum(codes.values())
    elif field == "ok":
        v = codes.get("200", 0)
    elif field == "rps":
        v = o["summary"]["requestsPerSec"]
    elif field in ("p50", "p99", "p99.9"):
        v = o["latencyPercentiles"][field] * 1000.0
    elif field == "max":
        v = o["summary"]["slowest"] * 1000.0
    else:
        raise SystemExit(f"unknown field {field}")
    print(v)


UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def wrk_out(path, field):
    """From wrk --latency text: requests, rps, latency p50/p99/max in ms."""
    text = open(path).read()
    if field == "requests":
        v = int(re.search(r"(\d+) requests in", text).group(1))
    elif field == "rps":
        v = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    elif field in ("p50", "p99"):
        m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s|m)\s*$" % field[1:], text, re.M)
        v = float(m.group(1)) * UNITS[m.group(2)]
    elif field == "max":
        m = re.search(r"^\s+Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s|m)", text, re.M)
        v = float(m.group(1)) * UNITS[m.group(2)]
    else:
        raise SystemExit(f"unknown field {field}")
    print(v)


def arrivals(path, rate, skip_secs):
    """Send regularity seen by the server, the same for every tool: from `pacer mock
    --record-arrivals`, arrival k (in time order) is due at t0 + k/rate, t0 chosen so the most
    punctual arrival has lag 0 (lag = arrival - k/rate - min over k of the same). Prints
    'count achieved_rate lag_p50_ms lag_p99_ms lag_max_ms', lags after skipping the first
    skip_secs. A tool that drops or adds requests shifts k, which shows as lag."""
    rate = float(rate)
    with open(path) as f:
        a = json.load(f)
    ts = sorted(x["tUs"] for x in a["arrivals"])
    if len(ts) < 2:
        print("0 nan nan nan nan")
        return
    t0 = ts[0]
    span = (ts[-1] - t0) / 1e6
    achieved = (len(ts) - 1) / span if span > 0 else float("nan")
    skip = int(float(skip_secs) * rate)
    offsets = [(t - t0) / 1000.0 - k * 1000.0 / rate for k, t in enumerate(ts)]
    zero = min(offsets)
    lags = sorted(o - zero for k, o in enumerate(offsets) if k >= skip)
    if not lags:
        print(f"{len(ts)} {achieved:.6g} nan nan nan")
        return

    def pct(p):
        return lags[min(len(lags) - 1, int(p / 100.0 * len(lags)))]

    print(f"{len(ts)} {achieved:.6g} {pct(50):.4g} {pct(99):.4g} {lags[-1]:.4g}")


def rss_series(path):
    """'first last max growth_pct' of an RSS series (MB, one a line), growth over the second
    half of the run (middle sample to last): the first half holds the warm-up (histograms and
    connection pools growing to their working size)."""
    xs = nums(path)
    a, b = xs[len(xs) // 2], xs[-1]
    print(f"{xs[0]:.1f} {xs[-1]:.1f} {max(xs):.1f} {100.0 * (b - a) / a:+.1f}")


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    globals()[cmd](*args)
