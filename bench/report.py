"""The printed report: Markdown tables from the bench's result (the JSON object, as a dict)."""

from __future__ import annotations

from typing import Any

from bench import figures


def tables(res: dict[str, Any]) -> str:
    parts = []
    seq = {r["name"]: r for r in res.get("sequential") or []}
    pipe = {r["name"]: r for r in res.get("pipeline") or []}
    if seq or pipe:
        rows = []
        for name in list(dict.fromkeys([*seq, *pipe])):
            s, p = seq.get(name, {}), pipe.get(name, {})
            rows.append(
                [
                    name,
                    s.get("fps") or s.get("error", "-")[:60],
                    p.get("fps") or p.get("error", "-")[:60],
                    p.get("ratio_to_sequential"),
                    s.get("cpu_ms_per_frame"),
                    p.get("cpu_ms_per_frame_total"),
                    p.get("faces_per_frame", s.get("faces_per_frame")),
                    p.get("drops_at_sink"),
                ]
            )
        header = ["clip/model", "sequential fps", "pipeline fps", "ratio", "seq CPU ms/frame"]
        header += ["pipeline CPU ms/frame (3 stages)", "faces/frame", "drops at sink"]
        parts.append(figures.table("Sequential reference vs real pipeline (files as fast as possible)", header, rows))
    runs = [r for k in ("pipeline", "scaling") for r in res.get(k) or []]
    runs += [res[k] for k in ("latency", "profile") if res.get(k)]
    seen, stage_rows = set(), []
    for r in runs:
        if "error" in r or id(r) in seen:
            continue
        seen.add(id(r))
        for stage, s in r["stages"].items():
            drops: dict[str, int] = {}
            for fs in (s.get("final_stats") or {}).values():
                for k, v in ((fs or {}).get("drops") or {}).items():
                    drops[k] = drops.get(k, 0) + v
            rss = s.get("peak_rss_mb")
            stage_rows.append(
                [r["name"], stage, s["processes"], s["cpu_ms_per_frame"], "/".join(fmt1(x) for x in rss or []), drops]
            )
    if stage_rows:
        header = ["run", "stage", "processes", "CPU ms/frame", "peak RSS MiB", "drops (final stats)"]
        parts.append(figures.table("Per stage", header, stage_rows))
    lat = res.get("latency")
    if lat and "error" not in lat:
        lm, hops = lat["latency_ms"], lat["hops_p50_ms"]
        row = [lat["name"], lat["fps"], lm["p50"], lm["p95"], lm["p99"], *hops.values()]
        header = ["run", "achieved fps", "p50 ms", "p95 ms", "p99 ms", *[f"{h} p50 ms" for h in hops]]
        parts.append(figures.table("Latency: capture timestamp -> result at the sink", header, [row]))
    if res.get("scaling"):
        rows = [
            [
                r["name"],
                r.get("detectors"),
                r.get("classifiers"),
                r.get("sources"),
                r.get("transport"),
                r.get("fps") or r.get("error", "")[:60],
                r.get("per_source_fps"),
                r.get("ratio_to_1x1"),
            ]
            for r in res["scaling"]
        ]
        header = ["run", "detectors", "classifiers", "sources", "transport", "fps (all sources)", "per source"]
        header += ["vs 1 x 1"]
        parts.append(figures.table("Scaling", header, rows))
    cls = res.get("classifier")
    if cls and "error" not in cls:
        rows = [[b["batch"], b["ms_per_call"], b["ms_per_face"]] for b in cls["batches"]]
        parts.append(figures.table("Classifier alone (EmotionModel, 1 thread)", ["batch", "ms/call", "ms/face"], rows))
    hop = res.get("hop")
    if hop and "error" not in hop:
        rows = [
            [
                h["payload"],
                h["transport"],
                h["bytes"],
                h["cpu_ms_per_msg"],
                h["wall_ms_per_msg"],
                h.get("one_way_us", ""),
            ]
            for h in hop["rows"]
        ]
        header = ["payload", "transport", "bytes", "CPU ms/msg (both ends)", "wall ms/msg", "one-way µs (1 in flight)"]
        parts.append(figures.table("One hop: encode, send, receive, decode", header, rows))
    st = res.get("stall")
    if st and "error" not in st:
        rows = [
            [
                st["name"],
                st["before_ms"]["p50"],
                st["before_ms"]["p99"],
                st["after_max_ms"],
                st["recovery_s"],
                st["settled_ms"]["p50"],
                st["settled_ms"]["p99"],
            ]
        ]
        header = ["run", "before p50 ms", "before p99 ms", "max after resume ms", "back under bar after s"]
        header += ["from +1 s p50 ms", "from +1 s p99 ms"]
        parts.append(figures.table("Stall: display SIGSTOPped, then resumed (30 fps)", header, rows))
        rows = [[n, m["before_mb"], m["peak_mb"], m["end_mb"], m["growth_mb"]] for n, m in st["memory"].items()]
        header = ["stage", "RSS before MiB", "peak (stall .. +2 s) MiB", "end MiB", "growth MiB"]
        parts.append(figures.table("Stall: resident memory", header, rows))
    hosts = res.get("hosts")
    if hosts and hosts.get("skipped"):
        parts.append(f"Across hosts: skipped ({hosts['skipped']})")
    elif hosts and hosts.get("rows"):
        rows = []
        for h in hosts["rows"]:
            lat = h.get("latency_ms") or {}
            fps = h.get("fps") or h.get("error", "-")[:60]
            got = h.get("display_got") or {}
            shown = f"{got.get('pixels', '-')} / {got.get('thumbnail', '-')}"
            row = [h["name"], fps, h.get("of_default"), lat.get("p50"), lat.get("p99"), h.get("no_emotions"), shown]
            rows.append(row)
        header = ["placement", "fps", "of the first row", "p50 ms", "p99 ms", "frames without emotions"]
        header += ["display got pixels / thumbnail"]
        parts.append(figures.table("Across hosts (network namespaces, files as fast as possible)", header, rows))
    prof = (res.get("profile") or {}).get("profile")
    if prof:
        rows = [[stage, k, v] for stage, p in prof.items() if p for k, v in p["categories"].items()]
        parts.append(figures.table("Profile (py-spy, share of samples incl. idle)", ["stage", "where", "%"], rows))
    return "\n".join(parts)


def fmt1(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"
