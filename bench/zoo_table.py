"""The zoo sweep's markdown table and pass counts (``bench/zoo_sweep.py --table``)."""

from __future__ import annotations


def _fmt(value, spec: str = "") -> str:
    if value is None:
        return ""
    return format(value, spec) if spec else str(value)


def _row(r: dict) -> str:
    reach = f"{100 * r['conv_reach']:.0f}%" if r.get("conv_reach") is not None else ""
    error = (r.get("error") or "").replace("|", "/")
    return (f"| {r['model']} | {r['status']} | {r.get('stage') or ''} | {r.get('input_shape', '')} | "
            f"{_fmt(r.get('groups'))} | {reach} | {_fmt(r.get('perf_err_pct'), '.1f')} | "
            f"{_fmt(r.get('dense_ms'), '.3f')} | {_fmt(r.get('pruned_ms'), '.3f')} | "
            f"{_fmt(r.get('pruned_over_dense'), '.2f')} | {_effort(r)} | {_fmt(r.get('cpu_s'), '.0f')} | "
            f"{_fmt(r.get('time_s'), '.0f')} | {error} |")


def _effort(r: dict) -> str:
    """Profile effort: engines x (rounds x runs) at level L (bench/zoo_effort.py)."""
    e = r.get("effort")
    return f"L{e['level']}: {e['builds']}x{e['rounds']}x{e['runs_per_round']}" if e else ""


def counts(records: list[dict], prefix: str) -> tuple[int, int]:
    mine = [r for r in records if r["model"].startswith(prefix)]
    return sum(r["status"] == "pass" for r in mine), len(mine)


def _cap(r: dict) -> bool:
    return "cap" in (r.get("error") or "")


def print_table(records: list[dict], expected: list[str] | None = None) -> None:
    """Counts (passed / run / listed), the table, and the listed models not run yet."""
    ran = {r["model"] for r in records}
    for prefix in ("torchvision:", "timm:"):
        passed, total = counts(records, prefix)
        listed = [m for m in expected or [] if m.startswith(prefix)]
        capped = sum(_cap(r) for r in records if r["model"].startswith(prefix))
        print(f"{prefix[:-1]}: {passed} pass of {total} run ({capped} of the failures stopped by a cap)"
              + (f"; {len(listed) - len([m for m in listed if m in ran])} of {len(listed)} listed not run yet"
                 if listed else ""))
    print()
    print("| model | result | failing stage | input | groups | convs reached | perf err % (held-out) | "
          "dense ms | pruned ms | pruned/dense | profile effort | CPU s | wall s | error |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        print(_row(r))
    missing = [m for m in expected or [] if m not in ran]
    if missing:
        print()
        print(f"Not run yet ({len(missing)}): " + ", ".join(missing))


def compare(before: dict[str, dict], after: dict[str, dict]) -> list[str]:
    """The models both sweeps ran, ``after`` against ``before``: passes, and the held-out error of those that
    passed in both (worse: above ``before``'s by more than a point, the sweep's own noise at these profile
    sizes), as markdown lines."""
    both = sorted(set(before) & set(after))
    passed = [m for m in both if before[m]["status"] == after[m]["status"] == "pass"]
    errs = [(m, before[m].get("perf_err_pct"), after[m].get("perf_err_pct")) for m in passed]
    errs = [(m, b, a) for m, b, a in errs if b is not None and a is not None]
    worse = [(m, b, a) for m, b, a in errs if a > b + 1.0]
    lost = [m for m in both if before[m]["status"] == "pass" and after[m]["status"] != "pass"]
    gained = [m for m in both if before[m]["status"] != "pass" and after[m]["status"] == "pass"]
    med = (lambda xs: sorted(xs)[len(xs) // 2] if xs else float("nan"))  # noqa: E731
    lines = [f"- models in both: {len(both)}; pass in both: {len(passed)}; passed before only: {len(lost)} "
             f"({', '.join(lost)}); passed after only: {len(gained)} ({', '.join(gained)})",
             f"- median held-out error of those passing both: {med([b for _, b, _ in errs]):.2f}% before, "
             f"{med([a for _, _, a in errs]):.2f}% after; better in {sum(a < b for _, b, a in errs)} of {len(errs)}",
             f"- more than a point worse after ({len(worse)}): "
             + ", ".join(f"{m} {b:.1f} -> {a:.1f}" for m, b, a in worse)]
    noise = [(before[m].get("noise_pct"), after[m].get("noise_pct")) for m, _, _ in errs]
    bar = [sum(r[m]["perf_err_pct"] <= max(1.5 * (r[m].get("noise_pct") or 0.0), 2.0) for m, _, _ in errs)
           for r in (before, after)]
    better = [(m, b, a) for m, b, a in errs if a < b - 1.0]
    lines.append(f"- more than a point better after ({len(better)}): "
                 + ", ".join(f"{m} {b:.1f} -> {a:.1f}" for m, b, a in better))
    lines.append(f"- median noise floor of those: {med([b for b, _ in noise if b is not None]):.2f}% before, "
                 f"{med([a for _, a in noise if a is not None]):.2f}% after; held-out error within "
                 f"max(1.5 x noise, 2%): {bar[0]} of {len(errs)} before, {bar[1]} after")
    tail = [(sum(e) / len(e) if e else float("nan"), sorted(e)[int(0.9 * (len(e) - 1))] if e else float("nan"),
             sum(x > 5.0 for x in e)) for e in ([b for _, b, _ in errs], [a for _, _, a in errs])]
    lines.append(f"- held-out error mean, 90th percentile, models above 5%: {tail[0][0]:.2f}%, {tail[0][1]:.2f}%, "
                 f"{tail[0][2]} before; {tail[1][0]:.2f}%, {tail[1][1]:.2f}%, {tail[1][2]} after")
    return lines
