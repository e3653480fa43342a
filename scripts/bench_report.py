"""Writes the results of ``scripts/bench.py compare`` for people: docs/bench/compare.json,
matplotlib plots in docs/bench/*.png and the Markdown section of docs/BENCHMARKS.md
(:func:`markdown`, placed between markers by bench.py). Every number comes from the JSON;
the targets of issue #5 are checked here, from the same numbers."""

from __future__ import annotations

import json
from pathlib import Path

from p2pboard import wire

SYSTEM_NAMES = {"p2pboard": "p2pboard", "relay": "TCP relay", "zmq": "ZeroMQ PUB/SUB",
                "mcast": "plain multicast", "socket": "socket ceiling"}
RATE_ORDER = ("100mbit", "1gbit", "unlimited")


def _find(results, workload, system, rate):
    for r in results:
        if r["workload"] == workload and r["system"] == system and r["rate"] == rate:
            return r
    return None


def _fmt(v, unit="", digits=None):
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float) and digits is not None:
        v = round(v, digits)
    if isinstance(v, (int, float)) and abs(v) >= 10000:
        return f"{v:,.0f}{unit}"
    return f"{v}{unit}"


def _ceiling_bpp(results) -> str:
    v = [r["bytes_per_pixel"] for r in results if r["system"] == "socket" and r["bytes_per_pixel"]]
    return f"about {min(v):.1f}" if v else "some"


def _rates(results):
    have = {r["rate"] for r in results}
    return [x for x in RATE_ORDER if x in have] + sorted(have - set(RATE_ORDER))


def _cores(data: dict) -> int | None:
    """The machine's CPU count: ``cpus`` in the JSON, or the start of ``machine``."""
    if data.get("cpus"):
        return int(data["cpus"])
    head = data.get("machine", "").split(" CPUs", 1)
    return int(head[0]) if len(head) == 2 and head[0].isdigit() else None


def bulk_budget(data: dict, workload: str, rate: str, share: float = 0.8) -> dict | None:
    """What delivering ``workload``'s image at ``share`` of the socket ceiling's speed
    leaves each receiver, from this run's own figures: the time that allows (the
    ceiling's, divided by ``share``), the CPU the machine's cores give in that time, less
    the author's (the cheaper of the two multicast authors, p2pboard's and plain's, which
    both encode the image and send each datagram once), shared by every receiver's every
    datagram; beside the CPU a datagram took the socket ceiling's receivers (which decode
    nothing), plain multicast's and p2pboard's in the same run. None if a figure is
    missing."""
    res = data["results"]
    sock, p, m = (_find(res, workload, s, rate) for s in ("socket", "p2pboard", "mcast"))
    cores = _cores(data)
    if not (sock and p and cores and sock["image_seconds"] and sock["wire_datagrams"]):
        return None
    rounds = sock["extra"].get("rounds", 1)
    dgrams = sock["wire_datagrams"] / rounds  # the ceiling's datagrams: the image's
    receivers = sock["peers"] - 1
    allowed = sock["image_seconds"] / share
    authors = [r["sender_cpu_s"] for r in (p, m) if r and r["sender_cpu_s"] is not None]
    if not authors:
        return None
    author = min(authors)
    left = (cores * allowed - author) / (receivers * dgrams)

    def per(r):
        v = r and r["receiver_cpu_s_mean"]
        return None if v is None else v / dgrams

    costs = {"socket": per(sock), "mcast": per(m), "p2pboard": per(p)}
    if left <= 0:
        reach = "no: the author's CPU alone is more"
    elif costs["socket"] is not None and left < costs["socket"]:
        reach = "no: less than reading alone costs"
    elif costs["mcast"] is not None and left < costs["mcast"]:
        reach = "not for plain multicast either"
    elif costs["p2pboard"] is not None and left < costs["p2pboard"]:
        reach = "for plain multicast, not for p2pboard"
    else:
        reach = "yes"
    return dict(workload=workload, rate=rate, cores=cores, receivers=receivers,
                datagrams=round(dgrams), ceiling_s=sock["image_seconds"], allowed_s=allowed,
                cpu_s=cores * allowed, author_cpu_s=author, left_us=left * 1e6,
                cost_us={k: None if v is None else v * 1e6 for k, v in costs.items()},
                reach=reach)


def _us(v) -> str:
    return "–" if v is None else f"{v:.1f}"


def targets(data: dict) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for every target of issue #5 that this run measured."""
    res = data["results"]
    out = []

    def verdict(ok):
        return "n/a" if ok is None else ("pass" if ok else "**fail**")

    for rate in ("1gbit",) + tuple(x for x in _rates(res) if x != "1gbit"):
        p, rl, z = (_find(res, "strokes-8", s, rate) for s in ("p2pboard", "relay", "zmq"))
        if p and p["latency_p99_ms"] is not None:
            ok = (p["latency_p99_ms"] <= 5 and all(
                o and o["latency_p99_ms"] is not None and p["latency_p99_ms"] < o["latency_p99_ms"]
                for o in (rl, z)))
            out.append((f"strokes, 8 peers drawing, {rate}: p99 <= 5 ms and below relay and ZeroMQ",
                        f"{p['latency_p99_ms']} ms (relay {rl and rl['latency_p99_ms']}, "
                        f"ZeroMQ {z and z['latency_p99_ms']})", verdict(ok)))
        p, rl, z = (_find(res, "strokes-8x1", s, rate) for s in ("p2pboard", "relay", "zmq"))
        if p and p["latency_p99_ms"] is not None:
            ok = (p["latency_p99_ms"] <= 5 and all(
                o and o["latency_p99_ms"] is not None and p["latency_p99_ms"] < o["latency_p99_ms"]
                for o in (rl, z)))
            out.append((f"strokes, 8 peers, one drawing, {rate}: p99 <= 5 ms and below relay "
                        "and ZeroMQ", f"{p['latency_p99_ms']} ms (relay "
                        f"{rl and rl['latency_p99_ms']}, ZeroMQ {z and z['latency_p99_ms']})",
                        verdict(ok)))
    p = _find(res, "image-4", "p2pboard", "1gbit")
    if p:
        t = p["image_seconds"]
        out.append(("image, 1 Gbit/s, 4 receivers hold all of it within 1.5 s",
                     f"{_fmt(t, ' s')}" if p["converged"] else "not all delivered",
                     verdict(t is not None and t <= 1.5)))
    p, rl = _find(res, "image-16", "p2pboard", "100mbit"), _find(res, "image-16", "relay", "100mbit")
    if p and rl:
        tp, tr = p["image_seconds"], rl["image_seconds"]
        ratio = tr / tp if tp and tr else None
        if tp is None and not p["converged"]:
            out.append(("image, 100 Mbit/s, 16 receivers: at least 4x as fast as the TCP relay",
                        f"p2pboard did not deliver it all within the timeout (relay "
                        f"{_fmt(tr, ' s')})", verdict(False)))
        else:
            out.append(("image, 100 Mbit/s, 16 receivers: at least 4x as fast as the TCP relay",
                        f"{_fmt(tp, ' s')} vs {_fmt(tr, ' s')}: {_fmt(ratio, 'x', 2)}",
                        verdict(None if ratio is None else ratio >= 4)))
    strokes = [r for r in res if r["system"] == "p2pboard" and r["workload"].startswith("strokes")
               and r["bytes_per_pixel"] is not None]
    if strokes:
        worst = max(strokes, key=lambda r: r["bytes_per_pixel"])
        out.append(("strokes: at most 1 byte on the wire per painted pixel (IP and UDP headers, "
                    "control included)", f"worst {worst['bytes_per_pixel']} "
                    f"({worst['workload']}, {worst['rate']})", verdict(worst["bytes_per_pixel"] <= 1)))
    for r in res:
        if r["system"] == "p2pboard" and r["workload"].endswith("-loss10"):
            checks = [("NACKs per loss event <= 1.5", r["nacks_per_loss"], lambda v: v <= 1.5),
                      ("repairs per loss event <= 1.2", r["repairs_per_loss"], lambda v: v <= 1.2),
                      ("repair latency p95 <= 10 ms", r["repair_p95_ms"], lambda v: v <= 10),
                      ("unrecovered gaps = 0", r["unrecovered"], lambda v: v == 0),
                      ("divergent pixels = 0", r["divergent_pixels"], lambda v: v == 0)]
            for label, v, f in checks:
                if not r["converged"]:  # figures of an unfinished run prove nothing
                    out.append((f"{r['workload']}, {r['rate']}: {label}",
                                f"{_fmt(v)} (but not converged: "
                                f"{_fmt(r['delivered_fraction'])} delivered at the timeout)",
                                verdict(False)))
                    continue
                out.append((f"{r['workload']}, {r['rate']}: {label}", _fmt(v),
                            verdict(None if v is None else f(v))))
    for r in res:
        if r["system"] == "p2pboard" and r["workload"] == "latejoin":
            v = r["latejoin_seconds"]
            out.append((f"late joiner, {r['rate']}: a full board in <= 2 s", _fmt(v, " s"),
                        verdict(None if v is None else v <= 2)))
    for r in res:
        if r["system"] == "p2pboard" and r["workload"].startswith("idle"):
            d, c = r["idle_datagrams_per_s_per_peer"], r["idle_cpu_percent_per_peer"]
            out.append((f"idle, {r['rate']}: <= 1 datagram/s per peer and < 1% CPU",
                        f"{d} datagrams/s, {c}% CPU",
                        verdict(None if d is None else d <= 1 and c < 1)))
    for rate in _rates(res):
        for wl in ("image-4", "image-16"):
            p, s = _find(res, wl, "p2pboard", rate), _find(res, wl, "socket", rate)
            if p and s and p["pixels_per_s_per_receiver"] and s["pixels_per_s_per_receiver"]:
                share = p["pixels_per_s_per_receiver"] / s["pixels_per_s_per_receiver"]
                b = bulk_budget(data, wl, rate)
                why = ""
                if share < 0.8 and b is not None:
                    why = (f"; 80% leaves a receiver {_us(b['left_us'])} us of CPU a "
                           f"datagram, p2pboard's took {_us(b['cost_us']['p2pboard'])} "
                           "(see the budget table)")
                out.append((f"bulk receive ({wl}, {rate}) >= 80% of the socket ceiling",
                            f"{share:.0%} ({_fmt(p['pixels_per_s_per_receiver'])} vs "
                            f"{_fmt(s['pixels_per_s_per_receiver'])} pixels/s per receiver"
                            f"{why})", verdict(share >= 0.8)))
    return out


def _gauge_text(data: dict) -> str:
    """The host's speed through the run (bench_receive.gauge), if it was measured."""
    g = data.get("gauge")
    if not g:
        return ""
    at = ", ".join(f"{x['us']} " + ("at the start" if x["at"] == "start"
                                     else x["at"].replace("after ", "after the ") + " rows")
                   for x in g)
    return ("\n\n**How fast the host was:** decoding the photo's datagrams and applying them "
            "to a board, in one process with nothing else running, took (microseconds of "
            f"CPU a datagram, fastest of three passes) {at}. The same code on the same "
            "machine takes longer in a busy hour of a shared host, and every peer of every "
            "system with it: compare runs with this in mind.")


def _rounds_text(results) -> str:
    n = max((r["extra"].get("rounds", 1) for r in results), default=1)
    if n == 1:
        return "One run per cell, no averaging."
    return (f"The strokes and image workloads (with loss and without) ran {n} rounds, the "
            "systems taking turns in each; their figures are pooled over the rounds "
            "(percentiles over every sample of every round, counts summed, times, rates and "
            "CPU seconds the median round), and the p99, p95 or time of each round is shown "
            "beside them. The late join and idle workloads ran once.")


def _spread(r, key) -> str:
    """The per-round figures of a pooled result, e.g. "1.9 / 2.2 / 2.0"."""
    v = r["extra"].get(key)
    return " / ".join(_fmt(x) for x in v) if v else "–"


def _gc(r) -> str:
    """Full collections per peer while the workload ran, and the longest (ms)."""
    n, longest = r["extra"].get("gc_full_per_peer"), r["extra"].get("gc_full_max_ms")
    if n is None:
        return "–"
    return f"{_fmt(n)} ({_fmt(longest)} ms)" if n else "0"


def _table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(data: dict) -> str:
    res = data["results"]
    rates = _rates(res)
    by = lambda pred: [r for rate in rates for r in res if r["rate"] == rate and pred(r)]  # noqa: E731
    sysname = lambda r: SYSTEM_NAMES.get(r["system"], r["system"])  # noqa: E731
    parts = [f"""## Side by side: p2pboard, a TCP relay, ZeroMQ, plain multicast, the socket

Command: `{data['command']}` ({data['date']}, {data['seconds']:.0f} s; {data['machine']}).
Produced by scripts/bench.py, nothing edited by hand; the raw figures are in
[bench/compare.json](bench/compare.json). Every host is a network namespace on one bridge,
its link limited in both directions with tbf (`rate R burst 32kbit latency 20ms` on the
host's veth and on the bridge port); "unlimited" is the bare veth. Loss is nftables
dropping that share of every IP packet a receiver gets. Every system carries the same
p2pboard records (STROKE for strokes, IMAGE bands for the image) in the same messages
(p2pboard DATA datagrams of at most {wire.MAX_DATAGRAM} bytes) and applies them into the same
board; see scripts/bench_systems.py.

**Read with care:** every peer of every system runs on this one machine's cores. Sixteen
receivers are sixteen Python processes sharing them, so from about 8 peers drawing at
once the CPU, not the network, sets the stroke latency, for every system alike (see the
CPU columns). The image is 1920x1080, photo-like (smooth gradients and noise; {_ceiling_bpp(res)}
bytes per pixel on the wire once compressed, as the socket ceiling sends it). {_rounds_text(res)}{_gauge_text(data)}

### Targets of issue #5

""" + _table(["target", "measured", "verdict"], [list(t) for t in targets(data)])]

    rows = []
    for r in by(lambda r: r["workload"].startswith("strokes")):
        rows.append([r["rate"], r["workload"], sysname(r), _fmt(r["latency_p50_ms"]),
                     _fmt(r["latency_p99_ms"]), _spread(r, "latency_p99_ms_rounds"),
                     _fmt(r["bytes_per_pixel"]),
                     _fmt(r["extra"].get("cpu_percent_per_peer"), "%"), _gc(r),
                     _fmt(r["peak_memory_mb"]), _fmt(r["converged"]) if r["ran"] else "failed"])
    secs = {r["extra"].get("drawing_seconds") for r in res} - {None}
    for_how_long = f"for {_fmt(secs.pop())} s" if len(secs) == 1 else "for the same time"
    parts.append("### Strokes at mouse rate\n\n`strokes-N`: N peers all drawing 120 points "
                 f"a second {for_how_long}; `strokes-8x1`: 8 peers, one drawing. Latency "
                 "from the author's local apply to each remote apply, over every (record, "
                 "receiver) pair. Bytes: IP bytes every host sent (headers, ACKs, control "
                 "included) per painted pixel. CPU: each peer's share of one core from go "
                 "until everything was delivered. Full GCs: the garbage collector's full "
                 "collections per peer in that time (every peer is a Python process, and "
                 "reads nothing while one runs), and in brackets the longest, wall time "
                 "(peers that allocate alike collect at the same moment, so it includes "
                 "waiting for a core).\n\n" + _table(
                     ["rate", "workload", "system", "p50 ms", "p99 ms", "p99 ms by round",
                      "bytes/pixel", "CPU per peer", "full GCs per peer", "peak MB",
                      "converged"], rows) +
                 "\n\n![stroke latency](bench/strokes_latency.png)")
    rows = []
    for r in by(lambda r: r["workload"].startswith("image") and "loss" not in r["workload"]):
        rows.append([r["rate"], r["workload"], sysname(r), _fmt(r["image_seconds"]),
                     _spread(r, "image_seconds_rounds"),
                     _fmt(r["pixels_per_s_per_receiver"]), _fmt(r["sender_cpu_s"]),
                     _fmt(r["server_cpu_s"]), _fmt(r["receiver_cpu_s_mean"]),
                     _fmt(r["bytes_per_pixel"]), _fmt(r["peak_memory_mb"]),
                     _fmt(r["converged"]) if r["ran"] else "failed"])
    parts.append("### A pasted 1920x1080 image\n\nTime from the paste until every receiver "
                 "holds all of it (the median round, and each round); delivered pixels per "
                 "second of the median receiver; CPU seconds of the sender, the relay server "
                 "and the mean receiver.\n\n" + _table(
                     ["rate", "workload", "system", "all hold it (s)", "s by round",
                      "pixels/s per receiver",
                      "sender CPU s", "server CPU s", "receiver CPU s", "bytes/pixel",
                      "peak MB", "converged"], rows) +
                 "\n\n![image time](bench/image_time.png)\n\n![sender CPU](bench/sender_cpu.png)")
    budgets = [b for rate in rates for wl in ("image-4", "image-16")
               if (b := bulk_budget(data, wl, rate)) is not None]
    if budgets:
        rows = [[b["rate"], b["workload"], _fmt(b["ceiling_s"]), _fmt(round(b["allowed_s"], 3)),
                 _fmt(round(b["cpu_s"], 3)), _fmt(b["author_cpu_s"]), _us(b["left_us"]),
                 _us(b["cost_us"]["socket"]), _us(b["cost_us"]["mcast"]),
                 _us(b["cost_us"]["p2pboard"]), b["reach"]] for b in budgets]
        b0 = budgets[0]
        parts.append(
            "#### What 80% of the socket ceiling leaves a receiver\n\nThe bulk receive "
            "target asks for the image in at most the ceiling's time divided by 0.8. In "
            f"that time the machine's {b0['cores']} cores give that many CPU seconds; the "
            "author needs its own share (the cheaper of the two multicast authors of this "
            "run, p2pboard's and plain multicast's, which both encode the image and send "
            f"each of its {b0['datagrams']:,} datagrams once); the rest, divided among "
            "every receiver's every datagram, is what a receiver may spend on one. Beside "
            "it, what one cost in this same run: the socket ceiling's receivers (they only "
            "read it), plain multicast's (decode and apply in Python, no repair layer) and "
            "p2pboard's. Where what is left is below plain multicast's cost, this encoding "
            "decoded and applied in Python does not reach the target on this machine; "
            "below the ceiling's, no receiver does, whatever it is written in.\n\n" + _table(
                ["rate", "workload", "ceiling s", "allowed s", "CPU s in it",
                 "author CPU s", "left per datagram us", "ceiling's receiver us",
                 "plain multicast's us", "p2pboard's us", "within reach?"], rows))
    rows = []
    for r in by(lambda r: "loss" in r["workload"]):
        rows.append([r["rate"], r["workload"], sysname(r), _fmt(r["image_seconds"]),
                     _fmt(r["delivered_fraction"]), _fmt(r["loss_events"]),
                     _fmt(r["nacks_per_loss"]), _fmt(r["repairs_per_loss"]),
                     _fmt(r["repair_p50_ms"]), _fmt(r["repair_p95_ms"]),
                     _spread(r, "repair_p95_ms_rounds"), _fmt(r["unrecovered"]),
                     _fmt(r["divergent_pixels"]), _fmt(r["converged"]) if r["ran"] else "failed"])
    if rows:
        parts.append("### The image with loss at every receiver\n\nA loss event is a "
                     "datagram of the author missing at one receiver or more (multicast "
                     "systems; TCP hides its own retransmissions). NACKs and repairs are "
                     "every peer's (repairs: retransmissions and parity datagrams, those "
                     "asked for and those sent proactively), divided by loss events; repair "
                     "latency is from finding a datagram missing to holding it (by arrival "
                     "stamps; not counted for one that had arrived, unread, before the gap "
                     "was noticed). Unrecovered: datagrams missing at the end, summed over "
                     "receivers; divergent: pixels that differ from the image, summed over "
                     "receivers (and rounds). All hold it: the median round.\n\n" + _table(
                         ["rate", "workload", "system", "all hold it (s)", "delivered",
                          "loss events", "NACKs/loss", "repairs/loss", "repair p50 ms",
                          "repair p95 ms", "p95 ms by round", "unrecovered", "divergent px",
                          "converged"], rows))
    rows = [[r["rate"], sysname(r), _fmt(r["latejoin_seconds"]), _fmt(r["converged"])]
            for r in by(lambda r: r["workload"] == "latejoin")]
    if rows:
        parts.append("### Late join\n\nA peer joins a board that holds the full image; "
                     "time from its start until its board is identical. p2pboard: snapshot "
                     "from a peer; relay: the server replays its history. ZeroMQ PUB/SUB and "
                     "plain multicast have no late join.\n\n" + _table(
                         ["rate", "system", "seconds", "identical"], rows))
    rows = [[r["rate"], r["workload"], sysname(r), _fmt(r["idle_datagrams_per_s_per_peer"]),
             _fmt(r["idle_cpu_percent_per_peer"], "%"), _fmt(r["peak_memory_mb"])]
            for r in by(lambda r: r["workload"].startswith("idle"))]
    if rows:
        parts.append("### Idle\n\nFrames on the links per second per peer, every kind "
                     "(the system's own datagrams, TCP segments, and the kernel's IGMP "
                     "membership reports), and CPU per peer, over the idle period right "
                     "after every peer was connected.\n\n" + _table(
                         ["rate", "workload", "system", "datagrams/s per peer", "CPU per peer",
                          "peak MB"], rows))
    parts.append("![bytes per pixel](bench/bytes_per_pixel.png)")
    failed = [r for r in res if not r["ran"]]
    if failed:
        parts.append("Runs that failed: " + "; ".join(
            f"{r['rate']} {r['workload']} {r['system']}: {r['error']}" for r in failed))
    return "\n\n".join(parts) + "\n"


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plots(data: dict, outdir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = data["results"]
    rates = _rates(res)
    systems = ["p2pboard", "relay", "zmq", "mcast", "socket"]

    fig, axes = plt.subplots(1, len(rates), figsize=(4.5 * len(rates), 3.6), sharey=True,
                             squeeze=False)
    for ax, rate in zip(axes[0], rates):
        for s in systems[:4]:
            pts = sorted((r["peers"], r["latency_p99_ms"]) for r in res
                         if r["rate"] == rate and r["system"] == s and r["latency_p99_ms"]
                         and r["extra"].get("drawers") == r["peers"])
            if pts:
                ax.plot(*zip(*pts), marker="o", label=SYSTEM_NAMES[s])
        ax.axhline(5, color="grey", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_title(f"strokes, {rate}")
        ax.set_xlabel("peers, all drawing")
    axes[0][0].set_ylabel("latency p99 (ms)")
    axes[0][0].legend(fontsize=8)
    _save(fig, outdir / "strokes_latency.png")

    wls = [w for w in ("image-4", "image-16") if any(r["workload"] == w for r in res)]
    fig, axes = plt.subplots(1, max(1, len(wls)), figsize=(6 * max(1, len(wls)), 3.8),
                             squeeze=False)
    for ax, wl in zip(axes[0], wls):
        width = 0.8 / len(systems)
        for k, s in enumerate(systems):
            ys = []
            for rate in rates:
                r = _find(res, wl, s, rate)
                ys.append(r["image_seconds"] if r and r["image_seconds"] else 0)
            xs = [i + k * width for i in range(len(rates))]
            ax.bar(xs, ys, width, label=SYSTEM_NAMES[s])
            for x, y in zip(xs, ys):
                if not y:  # ran, but not every receiver got all of it (or failed)
                    ax.text(x, 0.02, "x", transform=ax.get_xaxis_transform(), ha="center",
                            color=f"C{k}", fontweight="bold")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rates))], rates)
        ax.set_yscale("log")
        ax.set_ylabel("until every receiver holds it (s)")
        ax.set_title(f"pasted 1920x1080 image, {wl.split('-')[1]} receivers\n"
                     "(x: not all delivered within the timeout)", fontsize=10)
    axes[0][0].legend(fontsize=8)
    _save(fig, outdir / "image_time.png")

    fig, ax = plt.subplots(figsize=(6, 3.8))
    rate = "1gbit" if "1gbit" in rates else rates[0]
    for s in systems:
        pts = sorted((r["peers"] - 1, r["sender_cpu_s"] + (r["server_cpu_s"] or 0))
                     for r in res if r["rate"] == rate and r["system"] == s
                     and r["workload"] in ("image-4", "image-16") and r["sender_cpu_s"])
        if pts:
            ax.plot(*zip(*pts), marker="o", label=SYSTEM_NAMES[s])
    ax.set_xlabel("receivers")
    ax.set_ylabel("sender CPU s (relay: client + server)")
    ax.set_title(f"sending the image, {rate}")
    ax.legend(fontsize=8)
    _save(fig, outdir / "sender_cpu.png")

    fig, ax = plt.subplots(figsize=(7, 3.8))
    cases = [w for w in ("strokes-2", "strokes-8", "strokes-16", "image-16")
             if any(r["workload"] == w for r in res)]
    width = 0.8 / len(systems)
    for k, s in enumerate(systems):
        ys = []
        for wl in cases:
            r = _find(res, wl, s, rate)
            ys.append(r["bytes_per_pixel"] if r and r["bytes_per_pixel"] else 0)
        ax.bar([i + k * width for i in range(len(cases))], ys, width, label=SYSTEM_NAMES[s])
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))], cases)
    ax.axhline(1, color="grey", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_ylabel("bytes on the wire per painted pixel")
    ax.set_title(f"all traffic, every host, {rate}")
    ax.legend(fontsize=8)
    _save(fig, outdir / "bytes_per_pixel.png")


def write(data: dict, docs: Path) -> None:
    outdir = docs / "bench"
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "compare.json").write_text(json.dumps(data, indent=1) + "\n")
    plots(data, outdir)
