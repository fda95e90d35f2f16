"""The HTML page of a case report: self-contained (PNG images as base64 data URIs, inline CSS, no scripts, no
external resources). Stable hooks for automated checks: ``#summary``, ``#histogram`` (an ``<img>`` inside),
``#images`` holding one ``.panel`` per input, ``#errors``, ``#changed``, ``#provenance``.

Per image: the target, the re-synthesis, the amplified difference (StyleGAN2 Fig. 10) and the two largest
optimised noise maps, min-max normalised to grey (Fig. 18); the distance histogram is drawn over the
calibration's generated and real distances (Fig. 9).
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any, Dict, List, Optional

import matplotlib
import numpy as np
from PIL import Image

from detector.check import difference_image
from detector.images import to_uint8
from detector.processing import Preprocessing

from .records import ResultRecord

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402

# ----------------------------------------------------------------------------------------------------------------
# Images and figures


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _tensor_png(t, max_size: Optional[int] = None) -> str:
    """[C, H, W] in [-1, 1] -> data URI of an 8-bit PNG; with ``max_size`` shrunk (Lanczos) to at most that many
    pixels on its long side (the opening's thumbnails)."""
    a = to_uint8(t.clamp(-1, 1)).permute(1, 2, 0).cpu().numpy()
    img = Image.fromarray(a[:, :, 0], mode="L") if a.shape[2] == 1 else Image.fromarray(a, mode="RGB")
    if max_size is not None and max(img.size) > max_size:
        img.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return _png_uri(buf.getvalue())


def _noise_png(n) -> str:
    """A noise map [1, H, W], min-max normalised to [0, 1] grey."""
    x = n.detach().float()
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) if hi > lo else x * 0
    return _tensor_png(x * 2 - 1)


def _histogram_png(doc: Dict[str, Any]) -> str:
    hist = doc["histogram"]
    bins = np.asarray(hist["bins"])
    n = max(1, len(hist["models"]))
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 3.6), squeeze=False)
    centers = (bins[:-1] + bins[1:]) / 2
    width = bins[1] - bins[0]
    for ax, mh in zip(axes[0], hist["models"]):
        if mh["generated"] is not None:
            ax.bar(centers, mh["generated"], width=width, color="tab:blue", alpha=0.45,
                   label="calibration: generated")
        if mh["real"] is not None:
            ax.bar(centers, mh["real"], width=width, color="tab:orange", alpha=0.45, label="calibration: real")
        ax.step(bins, list(mh["case"]) + [mh["case"][-1] if mh["case"] else 0], where="post", color="black",
                linewidth=1.8, label="this case")
        th = next((m["threshold"] for m in doc["summary"]["models"] if m["name"] == mh["name"]), None)
        if th is not None:
            ax.axvline(th, color="tab:red", linestyle="--", linewidth=1.2, label=f"threshold {th:.3f}")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("LPIPS distance")
        ax.set_ylabel("count")
        ax.set_title(mh["name"])
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return _png_uri(buf.getvalue())


# ----------------------------------------------------------------------------------------------------------------
# HTML

# A trailing backslash continues a rule on the next line (the string has no newline there).
_CSS = """
body{font-family:sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}
.panel{display:inline-block;vertical-align:top;border:1px solid #bbb;border-radius:4px;margin:6px;padding:8px;\
width:720px}
.panel.generated{border-color:#c0392b} .panel .verdict{font-weight:bold}
.panel figure{display:inline-block;margin:4px;text-align:center}
.panel figure img{width:128px;height:128px;image-rendering:pixelated;border:1px solid #ddd}
.panel figcaption{font-size:11px}
.sheet figure{display:inline-block;margin:3px;text-align:center;vertical-align:top}
.sheet figure img{width:64px;height:64px;image-rendering:pixelated;border:3px solid #bbb}
.sheet figure.generated img{border-color:#c0392b} .sheet figure.ambiguous img{border-color:#e67e22}
.sheet figure.consistent img{border-color:#c0392b;border-style:dashed}
.sheet figcaption{font-size:11px}
.mono{font-family:monospace;font-size:12px;word-break:break-all}
#histogram img{max-width:100%} .confusion td.diag{background:#e8f4e8;font-weight:bold}
img.scatter{width:400px} img.scatter.wide{width:100%;max-width:1200px}
pre{background:#f6f6f6;padding:8px;font-size:11px;overflow-x:auto}
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _fmt(d: Optional[float]) -> str:
    return "–" if d is None else f"{d:.4f}"


def _panel(img: Dict[str, Any], recs: List[ResultRecord], idx: int) -> str:
    generated = img["verdict"].startswith("generated")
    parts = [f'<div class="panel{" generated" if generated else ""}" id="panel-{idx}" '
             f'data-sha256="{_e(img["sha256"])}">',
             f'<div class="paths mono">{"<br>".join(_e(p) for p in img["paths"])}</div>',
             f'<div>verdict: <span class="verdict">{_e(img["verdict"])}</span>'
             + (f' (runner-up {_e(img["runner_up"])}, margin {img["margin"]:.2f}×)'
                if img.get("runner_up") and img.get("margin") is not None else "") + '</div>']
    ok = [r for r in recs if r.result is not None]
    if ok:
        # Images of the attributed network, else of the closest one.
        best = next((r for r in ok if img["attributed_to"] and r.model_sha256 ==
                     next(p["model_sha256"] for p in img["per_model"] if p["model"] == img["attributed_to"])),
                    min(ok, key=lambda r: r.distance))
        res = best.result
        figs = [("target", _tensor_png(best.target)), ("re-synthesis", _tensor_png(res.image)),
                ("difference ×4", _tensor_png(difference_image(best.target, res.image)))]
        maps = sorted(range(len(res.noise)), key=lambda i: -res.noise[i].shape[-1])[:2]
        for i in maps:
            r = res.noise[i].shape[-1]
            figs.append((f"noise {i} ({r}×{r})", _noise_png(res.noise[i])))
        parts.append('<div class="figures">' + "".join(
            f'<figure class="{_e(cap.split()[0])}"><img alt="{_e(cap)}" src="{uri}"><figcaption>{_e(cap)}'
            f'</figcaption></figure>' for cap, uri in figs) + "</div>")
    rows = "".join(f"<tr><td>{_e(p['model'])}</td><td>{_fmt(p['distance'])}</td><td>{_fmt(p['threshold'])}"
                   f" ({_e(p['threshold_source'])})</td><td>{_e(p['verdict'] or p['error'])}</td></tr>"
                   for p in img["per_model"])
    parts.append(f'<table class="distances"><tr><th>network</th><th>LPIPS distance</th><th>threshold</th>'
                 f'<th>verdict</th></tr>{rows}</table>')
    if img.get("preprocessing"):
        parts.append(f'<div class="processing">processing: '
                     f'{_e(Preprocessing.from_dict(img["preprocessing"]).summary())}</div>')
    for w in img.get("weaknesses", []):
        parts.append(f'<div class="warning weakness">weaker than calibrated: {_e(w)}</div>')
    if img["notes"]:
        parts.append(f'<div class="notes">{"; ".join(_e(n) for n in img["notes"])}</div>')
    parts.append(f'<div class="mono">sha256 {_e(img["sha256"])}</div></div>')
    return "".join(parts)


#: Thumbnails shown in the report's opening at most (the rest are in the per-image panels).
SHEET_LIMIT = 60


def _short_verdict(img: Dict[str, Any]) -> str:
    """What the verdict names, in a word or two: the network ('consistent with N' for a self-calibrated one),
    'none', 'ambiguous', 'no verdict', 'error'."""
    v = img.get("verdict") or ""
    if img.get("attributed_to"):
        name = str(img["attributed_to"])
        return f"consistent with {name}" if v.startswith("consistent with") else name
    return ("ambiguous" if v.startswith("ambiguous") else "none" if v == "not attributed" else v or "pending")


def _contact_sheet(doc: Dict[str, Any], records: Dict[str, List[ResultRecord]]) -> str:
    """Every checked image as a thumbnail (up to :data:`SHEET_LIMIT`), captioned with the network its verdict
    names and linked to its panel: the opening shows what was looked at, not only counts."""
    figs, shown, dashed = [], 0, False
    for i, img in enumerate(doc["images"]):
        rec = next((r for r in records.get(img["sha256"], []) if r.result is not None), None)
        if rec is None:
            continue
        shown += 1
        if shown > SHEET_LIMIT:
            continue
        v = img.get("verdict") or ""
        cls = ("consistent" if v.startswith("consistent with") else "generated" if img.get("attributed_to")
               else "ambiguous" if v.startswith("ambiguous") else "")
        dashed = dashed or cls == "consistent"
        name = img["paths"][0].replace("\\", "/").rsplit("/", 1)[-1] if img.get("paths") else img["sha256"][:12]
        figs.append(f'<figure class="{cls}"><a href="#panel-{i}"><img alt="{_e(name)}" title="{_e(name)}: '
                    f'{_e(v)}" src="{_tensor_png(rec.target, 96)}"></a><figcaption>{_e(_short_verdict(img))}'
                    f'</figcaption></figure>')
    if not figs:
        return ""
    more = f" The first {SHEET_LIMIT} of {shown} are shown." if shown > SHEET_LIMIT else ""
    legend = "; dashed: only consistent with a network calibrated on its own images" if dashed else ""
    return (f'<div class="sheet"><p><b>The images.</b> Each checked image, with the network its verdict names '
            f'under it (red frame{legend}; \'none\': not attributed). Click one for its details.{more}</p>'
            f'{"".join(figs)}</div>')


def _num(x: Optional[float]) -> str:
    """A rate or AUC for a table: four significant digits, '-' when absent."""
    return "-" if x is None else f"{float(x):.4g}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _pct(x: Optional[float]) -> str:
    return "?" if x is None else f"{100 * x:.1f} %"


def _how_sure(entry: Dict[str, Any], summary: Dict[str, Any], override: Optional[float]) -> str:
    """One network's evidence, in words: what its calibration measured (or that there is none)."""
    name, cal = _e(entry["name"]), entry.get("calibration") or {}
    if override is not None:
        return f"{name}: the threshold {override:g} was given by the user; its error rates were not measured here."
    if summary["threshold_source"] == "none":
        return f"{name}: not calibrated, so its distances get no verdict (run <code>detect calibrate</code>)."
    if summary["threshold_source"] == "self":
        return (f"{name}: calibrated on {cal.get('n_generated')} of its own images only: at its threshold it "
                f"recognised {_pct(cal.get('tpr'))} of them; how often it would claim a real image is unknown.")
    lo, hi = (cal.get("fpr_ci") or [None, None])[:2]
    return (f"{name}: calibrated on {cal.get('n_generated')} of its own images and {cal.get('n_real')} real ones; "
            f"at its threshold it recognised {_pct(cal.get('tpr'))} of its own images and wrongly claimed "
            f"{_pct(cal.get('achieved_fpr'))} of the real ones (95 % interval {_pct(lo)} to {_pct(hi)}).")


def _overview(doc: Dict[str, Any], records: Dict[str, List[ResultRecord]]) -> str:
    """The report's opening, for a reader who has never heard of projection: what was checked, what was found,
    how sure."""
    s, prov = doc["summary"], doc["provenance"]
    names = ", ".join(_e(m["name"]) for m in s["models"])
    n_models = len(s["models"])
    counts: Dict[str, int] = {}
    for verdict, n in s["verdicts"].items():
        key = ("generated" if verdict.startswith(("generated by", "consistent with")) else
               "ambiguous" if verdict.startswith("ambiguous") else verdict)
        counts[key] = counts.get(key, 0) + n
    one = s["models"][0]["name"] if n_models == 1 else None

    def named(verdict: str) -> str:  # one network's verdicts say 'this network': name it
        return verdict.replace("this network", one) if one else verdict

    found = [f"{n} {_e(named(v))}" for v, n in s["verdicts"].items()
             if v.startswith(("generated by", "consistent with"))]
    for key, words in (("not attributed", "not attributed to any network"), ("ambiguous", "too close to call "
                       "between two networks"), ("no verdict", "without a verdict (no calibration)"),
                       ("error", "could not be used")):
        if counts.get(key):
            found.append(f"{counts[key]} {words}")
    if s["pending"]:
        found.append(f"{s['pending']} still waiting to be projected")
    sure = "".join(f"<li>{_how_sure(e, m, prov.get('threshold_override'))}</li>"
                   for e, m in zip(prov["models"], s["models"]))
    if n_models > 1:
        sure += (f"<li>Between networks: an image goes to one only when the next-closest network's distance, each "
                 f"measured in units of that network's own images, is at least {s['margin']:g} times larger; "
                 f"closer than that it is too close to call.</li>")
    return f"""<section id="overview"><h2>In short</h2>{_known_truth(doc)}
<p><b>What was checked.</b> {_count(s['distinct'], 'distinct image')} against {_count(n_models, 'network')}:
{names}. For each network
the tool searched for the input from which the network reproduces the image most closely (StyleGAN2 §5) and
measured how close that reproduction is (LPIPS distance: smaller is closer). A network's own images come back
almost exactly; other images do not.{_second_look_sentence(s)}</p>
<p><b>What was found.</b> {'; '.join(found) if found else 'nothing yet'}.</p>
{_contact_sheet(doc, records)}
<p><b>How sure.</b></p><ul>{sure}</ul>{_evaluation(doc)}</section>
"""


def _second_look_sentence(summary: Dict[str, Any]) -> str:
    if not summary.get("second_look"):
        return ""
    return (" An image a network claimed was searched a second time, from another starting point, under every "
            "network that could change its verdict, and the closer of the two reproductions counts: one search "
            "stuck far from the answer cannot decide alone.")


def _known_truth(doc: Dict[str, Any]) -> str:
    """A one-line pointer to the evaluation when the sources of the inputs are known (``--truth``)."""
    ev = doc.get("evaluation")
    if not ev:
        return ""
    c = ev["confusion"]
    right = sum(c["matrix"][i][i] for i in range(len(c["labels"])))
    return (f"<p><b>Where the true source is known</b> ({ev['n_labelled']} images): {right} of {c['total']} "
            f"verdicts are right (for a real image the right verdict is 'not attributed'). The table below shows "
            f"which verdicts each source got.</p>")


def _evaluation(doc: Dict[str, Any]) -> str:
    """The confusion table (true source x verdict, calibrated rule) and the scatter of every image's distances
    under each pair of networks, when the report has an evaluation."""
    ev = doc.get("evaluation")
    if not ev:
        return ""
    from .metrics import scatter_png

    c = ev["confusion"]
    label = {lab: ("real (none)" if lab == "none" else lab) for lab in c["labels"]}
    head = "".join(f"<th>{_e('none' if lab == 'none' else lab)}</th>" for lab in c["labels"])
    rows = "".join(f"<tr><th>{_e(label[lab])}</th>" + "".join(
        f"<td{' class=diag' if i == j else ''}>{v}</td>" for j, v in enumerate(row)) + "</tr>"
                   for i, (lab, row) in enumerate(zip(c["labels"], c["matrix"])))
    amb = ", ".join(f"{_e(label.get(k, k))} {n}" for k, n in ev.get("ambiguous", {}).items() if n)
    plot = ""
    n_models = len(doc["summary"]["models"])
    if n_models >= 2:
        plot = (f"<figure><img class='scatter{' wide' if n_models > 2 else ''}' alt='distance under each network, "
                f"one colour per true source' src='{_png_uri(scatter_png(doc, ev['truth']))}'><figcaption>Each "
                f"image's distance under {'both networks' if n_models == 2 else 'two networks, per pair'} (log "
                f"scales); dashed: each network's threshold. A network's own images sit low on its axis and high "
                f"on the other's.</figcaption></figure>")
    return (f"<h3>Against the known sources</h3><table class='confusion'><tr><th>true source \\ verdict</th>"
            f"{head}</tr>{rows}</table>"
            f"<p>Rows: where the images came from; columns: the network the verdict names ('none': not attributed"
            f"{', or too close to call' if amb else ''}). {('Too close to call: ' + amb + '.') if amb else ''}</p>"
            f"{plot}")


def render_html(doc: Dict[str, Any], records: Dict[str, List[ResultRecord]]) -> str:
    s = doc["summary"]
    model_rows = "".join(
        f"<tr><td>{_e(m['name'])}</td><td>{_fmt(m['threshold'])}</td><td>{_e(m['threshold_source'])}</td>"
        f"<td>{_num(m['target_fpr'])}</td><td>{_num(m['achieved_fpr'])}</td><td>{_num(m['auc'])}</td>"
        f"<td class='mono'>{_e(m['file_sha256'])}</td></tr>" for m in s["models"])
    verdict_rows = "".join(f"<tr><td>{_e(k)}</td><td>{v}</td></tr>" for k, v in s["verdicts"].items())
    counts = ", ".join(f"{k} {s[k]}" for k in ("inputs", "distinct", "processed", "pending", "errors",
                                                 "unreadable", "changed", "stale_results"))
    warn = ""
    if any(m["threshold_source"] == "none" for m in s["models"]):
        warn = ("<p class='warning'><b>Warning:</b> at least one network has no calibration: its distances are "
                "shown without a verdict (run <code>detect calibrate</code> on it).</p>")
    if any(m["threshold_source"] == "self" for m in s["models"]):
        warn += ("<p class='warning'><b>Note:</b> at least one network is calibrated on its own images only: the "
                 "false-positive rate of its verdicts is unknown.</p>")
    weaker = sum(1 for img in doc["images"] if img.get("weaknesses"))
    if weaker:
        warn += (f"<p class='warning'><b>Note:</b> {weaker} of {len(doc['images'])} images went through processing "
                 f"the calibration did not cover (JPEG, resizing or cropping; listed under each image): for them "
                 f"the calibrated error rates are an optimistic bound.</p>")
    for d in doc["provenance"]["damaged_batches"]:
        warn += (f"<p class='warning'><b>Damaged result file</b> {_e(d['file'])} ({_e(d['error'])}): skipped, its "
                 f"images count as pending; the next <code>detect batch</code> moves it to quarantine/ and projects "
                 f"them again.</p>")
    panels = "".join(_panel(img, records.get(img["sha256"], []), i) for i, img in enumerate(doc["images"]))
    errors = "".join(f"<tr><td class='mono'>{_e(e['path'])}</td><td>{_e(e['error'])}</td></tr>"
                     for e in doc["errors"])
    changed = "".join(f"<tr><td class='mono'>{_e(c['path'])}</td><td class='mono'>{_e(c['old_sha256'][:16])}…</td>"
                      f"<td class='mono'>{_e(c['new_sha256'][:16])}…</td><td>{_e(c['detected'])}</td></tr>"
                      for c in doc["changed"])
    prov = json.dumps(doc["provenance"], indent=2, default=str)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Case {_e(doc['case']['case_id'])}</title>
<style>{_CSS}</style></head><body>
<h1>Attribution report — case {_e(doc['case']['case_id'])}</h1>
{_overview(doc, records)}<section id="summary"><h2>Summary</h2>
<p>{_e(counts)}</p>{warn}
<table class="verdicts"><tr><th>verdict</th><th>images</th></tr>{verdict_rows}</table>
<table class="models"><tr><th>network</th><th>threshold</th><th>source</th><th>target FPR</th>
<th>calibration FPR</th><th>calibration AUC</th><th>file sha256</th></tr>{model_rows}</table></section>
<section id="histogram"><h2>LPIPS distances</h2>
<img alt="LPIPS distance histogram of this case over the calibration's generated and real images"
 src="{_histogram_png(doc)}"></section>
<section id="images"><h2>Images</h2>{panels or '<p>No results yet.</p>'}</section>
<section id="errors"><h2>Errors</h2><table><tr><th>path</th><th>error</th></tr>{errors}</table></section>
<section id="changed"><h2>Inputs changed since recorded</h2>
<table><tr><th>path</th><th>old sha256</th><th>new sha256</th><th>detected</th></tr>{changed}</table></section>
<section id="provenance"><h2>Provenance</h2><pre>{_e(prov)}</pre></section>
</body></html>
"""
