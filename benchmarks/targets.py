"""Issue 9's targets, checked against one benchmark run (a list of plain dicts for the JSON).

- time: fusekit on bert-base at most 1/5 of onnxslim's wall time and no slower than
  onnxruntime's basic optimizer;
- memory: fusekit's peak RSS at most 1.5x the model file on models of 100 MB and more;
- nodes, engine and compute layers: fusekit at most the best peer's count, on every model
  (peers whose output does not match the original's are not counted);
- compute layers: fusekit at most the original export's (issue 16: never worse than raw);
- accuracy: fusekit's outputs within 1e-4 of the original at every batch size.
"""

from __future__ import annotations

TIME_MODEL = "bert-base"
TIME_RATIO_VS_ONNXSLIM = 0.2
RSS_RATIO = 1.5
RSS_MIN_FILE_BYTES = 100_000_000
MAX_DIFF = 1e-4
SUBJECT = "fusekit"


def evaluate(data: dict) -> list[dict]:
    results = {(r["model"], r["tool"]): r for r in data["results"]}
    models = {m["name"]: m for m in data["models"]}
    found = []
    found.extend(_time(results))
    for name, model in models.items():
        mine = results.get((name, SUBJECT))
        if mine is None:
            continue
        peers = [r for (m, tool), r in results.items() if m == name and tool != SUBJECT and _valid(r)]
        if mine["status"] != "ok":
            found.append(_row("runs", name, mine["status"], None, False, mine.get("error")))
            continue
        if model.get("file_bytes", 0) >= RSS_MIN_FILE_BYTES and mine.get("peak_rss"):
            ratio = mine["peak_rss"] / model["file_bytes"]
            found.append(_row("peak RSS / file size", name, round(ratio, 2), RSS_RATIO, ratio <= RSS_RATIO))
        found.append(_best_peer("nodes", name, mine.get("nodes"), [(p["tool"], p.get("nodes")) for p in peers]))
        found.append(_best_peer("engine layers", name, _layers(mine),
                                [(p["tool"], _layers(p)) for p in peers]))
        found.append(_best_peer("compute layers", name, _layers(mine, "compute_layers"),
                                [(p["tool"], _layers(p, "compute_layers")) for p in peers]))
        raw, compute = _layers(model, "compute_layers"), _layers(mine, "compute_layers")
        if raw is not None and compute is not None:
            found.append(_row("compute layers vs original", name, compute, raw, compute <= raw))
        diffs = (mine.get("accuracy") or {}).get("max_abs_diff")
        if diffs:
            worst = max(diffs.values())
            found.append(_row("max |diff|", name, worst, MAX_DIFF, worst <= MAX_DIFF))
        else:
            found.append(_row("max |diff|", name, None, MAX_DIFF, False,
                              (mine.get("accuracy") or {}).get("error", "not measured")))
    return [row for row in found if row is not None]


def _time(results: dict) -> list[dict]:
    mine = results.get((TIME_MODEL, SUBJECT))
    if mine is None or mine["status"] != "ok":
        return []
    rows = []
    for peer, ratio in (("onnxslim", TIME_RATIO_VS_ONNXSLIM), ("ort-basic", 1.0)):
        other = results.get((TIME_MODEL, peer))
        if other is not None and other["status"] == "ok":
            measured = mine["seconds"] / other["seconds"]
            rows.append(_row(f"time / {peer}", TIME_MODEL, round(measured, 2), ratio, measured <= ratio))
    return rows


def _valid(result: dict) -> bool:
    """A peer's output counts if the tool succeeded and its outputs match the original's."""
    if result["status"] != "ok":
        return False
    accuracy = result.get("accuracy")
    if accuracy is None:  # not measured (no reference): counted
        return True
    diffs = accuracy.get("max_abs_diff") or {}
    return accuracy.get("status") == "ok" and all(d <= MAX_DIFF for d in diffs.values())


def _best_peer(what: str, model: str, value, peers: list[tuple[str, int | None]]) -> dict | None:
    known = {tool: v for tool, v in peers if v is not None}
    if value is None or not known:
        return None
    best = min(known.values())
    tools = [tool for tool, v in known.items() if v == best]
    return _row(f"{what} vs best peer", model, value, best, value <= best, f"best: {', '.join(tools)}")


def _layers(result: dict, key: str = "engine_layers") -> int | None:
    trt = result.get("trt") or {}
    return trt.get(key) if trt.get("status") == "ok" else None


def _row(target: str, model: str, value, limit, met: bool, note: str | None = None) -> dict:
    return {"target": target, "model": model, "fusekit": value, "limit": limit, "met": met, "note": note}
