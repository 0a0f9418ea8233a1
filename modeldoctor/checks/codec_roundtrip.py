"""codec-roundtrip: do the subject's tokenizers give back what they were given, using their codebooks?"""
from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import replace

import torch

from ..core.check import Check, CheckContext
from ..core.registry import register_check
from ..core.results import RANK, Figure, Finding, Measurement, derive
from ..core.subject import Codec, Subject
from ..probes.codebooks import CodecTarget, codec_target, evaluation_mode, rebind
from ..probes.numerics import code_usage, psnr_db

MAX_BARS = 256  # code-usage bars per codec; more codes are averaged over groups of ranks
MAX_SIDE = 64  # images in figures are strided down to at most this many pixels a side


def id_ranges(ids: list[int], limit: int = 12) -> str:
    """Sorted code ids as compact ranges: [0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    runs: list[list[int]] = []
    for i in ids:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:limit]]
    return ", ".join(text) + (f", … (+{len(runs) - limit} ranges)" if len(runs) > limit else "")


def strided(image: torch.Tensor) -> list:
    """A 2-D image (or the channel mean of (C, H, W)) strided to at most MAX_SIDE a side, as lists."""
    image = image.float().mean(0) if image.dim() == 3 else image.float()
    step = max(1, math.ceil(max(image.shape) / MAX_SIDE))
    return image[::step, ::step].tolist()


def image_fidelity(pairs: list, codec: Codec) -> dict:
    """PSNR over all pixels; data range from `value_range`, else the samples' range."""
    x, x_hat = torch.cat([a.reshape(-1) for a, _ in pairs]), torch.cat([b.reshape(-1) for _, b in pairs])
    low, high = codec.value_range or (float(x.min()), float(x.max()))
    data_range = (high - low) or 1.0
    return {"psnr_db": psnr_db(float(((x_hat - x) ** 2).mean()), data_range), "data_range": data_range}


def signal_fidelity(pairs: list, codec: Codec) -> dict:
    """Mean per-example Pearson correlation (constant originals left out) and relative L2 error."""
    corrs, errors = [], []
    for x, x_hat in pairs:
        a, b = x.reshape(len(x), -1), x_hat.reshape(len(x), -1)  # (B, L)
        a0, b0 = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        corrs.append(((a0 * b0).sum(1) / (a0.norm(dim=1) * b0.norm(dim=1)).clamp(min=1e-30))[a0.norm(dim=1) > 0])
        errors.append(((b - a).norm(dim=1) / a.norm(dim=1))[a.norm(dim=1) > 0])
    corr, error = torch.cat(corrs), torch.cat(errors)
    return {"correlation": float(corr.mean()) if len(corr) else math.nan,
            "relative_error": float(error.mean()) if len(error) else math.nan}


def scalar_fidelity(pairs: list, codec: Codec) -> dict:
    """Share of values within half a bin, max error in bins, and PSNR against PSNR_q = 10·log10(12R²/Δ²).

    Values outside `value_range` saturate by design and are left out.
    """
    if not codec.bin_width:
        return {}
    x, x_hat = torch.cat([a.reshape(-1) for a, _ in pairs]), torch.cat([b.reshape(-1) for _, b in pairs])
    low, high = codec.value_range or (float(x.min()), float(x.max()))
    inside = (x >= low) & (x <= high)
    error = (x_hat - x).abs()[inside]
    if not len(error):
        return {}
    data_range = (high - low) or 1.0
    return {"within_half_bin": float((error <= codec.bin_width / 2 * (1 + 1e-5)).double().mean()),
            "max_error_bins": float(error.max()) / codec.bin_width, "inputs_outside_range": float((~inside).double().mean()),
            "psnr_db": psnr_db(float((error**2).mean()), data_range),
            "psnr_expected_db": 10 * math.log10(12 * data_range**2 / codec.bin_width**2)}


FIDELITY = {"image": image_fidelity, "signal": signal_fidelity, "scalar": scalar_fidelity}


@register_check
class CodecRoundtrip(Check):
    """Codec round trip: decode(encode(x)) against x, and how much of the codebook is used.

    What it checks
    For every codec the subject declares (`Subject.codecs`), over the codec's held-out samples:
    fidelity of decode(encode(x)) — PSNR for images (data range from `value_range`, else the
    samples' range), mean per-example Pearson correlation and relative L2 error ||x̂-x||/||x|| for
    signals, and for scalar binning the share of values within half a bin, |x̂-x| ≤ Δ/2 (values
    outside `value_range` saturate by design and are left out) — and codebook use: codes used of
    K, perplexity exp(H) and perplexity/K, dead codes (never used) and which ones. Code counts are
    accumulated over all sample batches: per-batch usage is capped by the batch size. Codes outside
    [0, K) and reconstructions shaped unlike the input fail. Codecs that follow the codebook
    protocol of `modeldoctor.vq` run on the check's copy of their module, in eval mode.

    Why it matters
    The downstream model cannot beat its tokenizer. The seed's astro model fed 512-code VQ tokens
    of spectra to a transformer whose spectrum correlation stayed at ~0; its advice: "Test
    encode-decode cycle ... Should look similar to original". A collapsed codebook maps most inputs
    to a handful of codes (VQGAN at 16384 codes uses < 12%, the failure case of VQGAN-LC), and an
    off-by-half-bin decode silently adds a bias to every scalar token.

    Evidence
    Per codec: fidelity, codes used, perplexity, dead codes (metrics `<codec>.<name>`, plus
    `worst_codec`); originals next to reconstructions for image codecs, overlays of two examples
    for signal codecs, a code-usage histogram sorted by count, and a table of codes never used.

    Fixes
    codebook-reset and codebook-resize when usage collapses or warns: the reset restarts dead
    codes from encoder outputs (k-means for an almost all-dead codebook) and turns on dead-code
    restarts in training; the resize grows the codebook ×16 (the seed's 512 → 8192) with the
    vocabularies that depend on it, and on a collapsed codebook belongs after the reset. Poor
    fidelity with healthy usage is usually a scale, offset or layout bug in encode/decode; the
    finding's notes say where to look (and that more codes add capacity if there is no bug).

    Options
    fail_usage (0.10): fail when a codec uses fewer than this share of its codes.
    warn_usage (0.25): warn below this share. Both are scaled by `usage_ceiling` when the samples
        hold too few tokens to reach every code.
    warn_perplexity_ratio (0.10): warn when perplexity/K is below this (a few codes dominate).
    min_psnr_db (20.0): fail image codecs below this PSNR; raise it to the downstream target + 3 dB.
    min_signal_corr (0.5), warn_signal_corr (0.9): fail/warn signal codecs below this correlation.
    max_signal_rel_error (0.5): fail signal codecs whose relative L2 error is above this.
    min_within_half_bin (0.99): fail scalar codecs with fewer values than this within half a bin.
    max_batches (50): sample batches per codec.
    """

    slug = "codec-roundtrip"
    code = "MD007"
    title = "Codec round trip and codebook usage"
    fixes = ("codebook-reset", "codebook-resize")
    default_options = {
        "fail_usage": 0.10, "warn_usage": 0.25, "warn_perplexity_ratio": 0.10, "min_psnr_db": 20.0,
        "min_signal_corr": 0.5, "warn_signal_corr": 0.9, "max_signal_rel_error": 0.5,
        "min_within_half_bin": 0.99, "max_batches": 50,
    }

    def requires(self, subject: Subject) -> str | None:
        return None if subject.codecs else "the subject declares no codecs (capability `codecs`)"

    def measure(self, subject: Subject, ctx: CheckContext) -> Measurement:
        metrics, drawn, notes = {}, [], []
        for name, codec in subject.codecs.items():
            ctx.ensure_time(f"round trip of codec {name!r}")
            target = codec_target(subject, name)
            if isinstance(target, CodecTarget):  # run the copy's module, in eval mode
                codec = rebind(subject, target)
            with evaluation_mode(target.module) if isinstance(target, CodecTarget) else contextlib.nullcontext():
                found, counts, pairs = self.roundtrip(codec)
            metrics.update({f"{name}.{key}": value for key, value in found.items()})
            # (x, x̂) of four examples for the figures; copies, so the batches they come from can go
            shown = [(x.clone(), x_hat.clone()) for x, x_hat in itertools.islice(
                (pair for x, x_hat in pairs for pair in zip(x, x_hat)), 4)]
            if codec.kind not in FIDELITY or (codec.kind == "scalar" and not codec.bin_width):
                notes.append(f"codec '{name}': fidelity not judged (kind {codec.kind!r}"
                             f"{' without bin_width' if codec.kind == 'scalar' else ''}); codebook use only")
            drawn.append((name, codec, found, counts, shown))
        status = {name: derive(self.codec_findings(name, metrics))[0] for name in subject.codecs}
        metrics["worst_codec"] = max(status, key=lambda n: (RANK[status[n]], -metrics[f"{n}.usage"]))
        return Measurement(metrics=metrics, figures=lambda: self.all_figures(drawn), notes=notes)

    @torch.no_grad()
    def roundtrip(self, codec: Codec) -> tuple[dict, torch.Tensor, list]:
        """(metrics, code counts (K,), (x, x̂) batch pairs) over the codec's samples."""
        k = codec.num_codes
        counts, bad_codes, shape_error, pairs = torch.zeros(k, dtype=torch.long), 0, None, []
        for x in itertools.islice(codec.samples, self.options["max_batches"]):
            encoded = codec.encode(x)
            codes = encoded.reshape(-1).long()
            valid = (codes >= 0) & (codes < k)
            bad_codes += int((~valid).sum())
            counts += torch.bincount(codes[valid], minlength=k)
            x_hat = codec.decode(encoded)
            if x_hat.shape == x.shape:
                pairs.append((x.double(), x_hat.double()))
            else:
                shape_error = shape_error or f"{tuple(x.shape)} -> {tuple(x_hat.shape)}"
        unused = id_ranges(torch.nonzero(counts == 0).flatten().tolist()) or "none"
        found = {"kind": codec.kind, "module": codec.module, **code_usage(counts), "unused_codes": unused,
                 "out_of_range_codes": bad_codes, "shape_error": shape_error}
        if pairs and codec.kind in FIDELITY:
            found.update(FIDELITY[codec.kind](pairs, codec))
        return found, counts, pairs

    def all_figures(self, drawn: list[tuple]) -> list[Figure]:
        """Each codec's figures, then the table of codebook use over all codecs."""
        figures, rows = [], []
        for name, codec, found, counts, shown in drawn:
            figures += self.figures(name, codec, counts, shown)
            rows.append([name, codec.kind, codec.num_codes, found["codes_used"], f"{found['usage']:.1%}",
                         f"{found['perplexity_ratio']:.3f}", found["unused_codes"]])
        return figures + [Figure("table", "Codebook use per codec", {
            "columns": ["codec", "kind", "codes", "used", "usage", "perplexity/K", "never used"], "rows": rows})]

    def figures(self, name: str, codec: Codec, counts: torch.Tensor, shown: list) -> list[Figure]:
        figures = []
        if codec.kind == "image" and shown:
            images = []
            for i, (x, x_hat) in enumerate(shown):
                images += [{"label": f"original {i}", "pixels": strided(x)}, {"label": f"decoded {i}", "pixels": strided(x_hat)}]
            vmin, vmax = codec.value_range or (min(float(x.min()) for x, _ in shown), max(float(x.max()) for x, _ in shown))
            channels = " (channel mean)" if shown[0][0].dim() == 3 else ""
            figures.append(Figure("images", f"Codec '{name}': originals and reconstructions{channels}",
                                  {"images": images, "vmin": vmin, "vmax": vmax}))
        if codec.kind == "signal" and shown:
            series = []
            for i, (x, x_hat) in enumerate(shown[:2]):
                a, b = x.reshape(-1), x_hat.reshape(-1)
                step = max(1, math.ceil(len(a) / 512))
                xs = list(range(0, len(a), step))
                series += [{"name": f"original {i}", "x": xs, "y": a[::step].tolist()},
                           {"name": f"decoded {i}", "x": xs, "y": b[::step].tolist()}]
            figures.append(Figure("line", f"Codec '{name}': originals and reconstructions", {
                "series": series, "xlabel": "position", "ylabel": "value"}))
        ranked, order = counts.sort(descending=True)
        title, labels = f"Codec '{name}': code usage, {len(counts)} codes sorted by count", [str(i) for i in order.tolist()]
        if len(counts) > MAX_BARS:
            group = math.ceil(len(counts) / MAX_BARS)
            ranked = torch.stack([chunk.double().mean() for chunk in ranked.split(group)])
            labels = [f"ranks {i * group}-{min((i + 1) * group, len(counts)) - 1}" for i in range(len(ranked))]
            title += f" (mean over groups of {group} ranks)"
        figures.append(Figure("bar", title, {"labels": labels, "values": ranked.tolist(), "ylabel": "count", "xlabel": "codes, most used first",
                                             "hlines": [{"y": float(counts.sum()) / len(counts), "label": "uniform use"}]}))
        return figures

    def codec_findings(self, name: str, metrics: dict) -> list[Finding]:
        """A finding for every threshold one codec crosses (none when it is healthy)."""
        o, m = self.options, {key[len(name) + 1:]: v for key, v in metrics.items() if key.startswith(name + ".")}
        found: list[Finding] = []

        def add(status: str, kind: str, text: str, keys: tuple[str, ...], fixes: tuple[str, ...] = ()) -> None:
            lead = "codec round trip fails" if status == "fail" else "codec round trip degraded"
            found.append(Finding(status, kind, f"{lead}: codec '{name}' {text}", tuple(f"{name}.{k}" for k in keys), fixes))

        if not m["tokens"]:
            add("warn", "no-samples", "gave no samples to round-trip", ("tokens",))
            return found
        # Both codebook fixes when usage collapses; none for fidelity alone, which is often a bug.
        ceiling, used = m["usage_ceiling"], f"uses {m['codes_used']} of {m['num_codes']} codes ({m['usage']:.1%})"
        low = "fail" if m["usage"] < o["fail_usage"] * ceiling else "warn" if m["usage"] < o["warn_usage"] * ceiling else None
        if low:
            add(low, "usage", used, ("usage", "codes_used", "num_codes", "usage_ceiling"), self.fixes)
        elif m["perplexity_ratio"] < o["warn_perplexity_ratio"] * ceiling:
            add("warn", "concentrated", f"concentrates on few codes (perplexity {m['perplexity']:.1f} of {m['num_codes']})",
                ("perplexity", "perplexity_ratio"), self.fixes)
        usage_problem = bool(found)
        if m["out_of_range_codes"]:
            add("fail", "invalid-codes", f"encodes {m['out_of_range_codes']} values to codes outside [0, {m['num_codes']})",
                ("out_of_range_codes", "num_codes"))
        if m["shape_error"]:
            add("fail", "shape", f"decodes to another shape ({m['shape_error']})", ("shape_error",))
        elif m["kind"] == "image" and not m["psnr_db"] >= o["min_psnr_db"]:
            add("fail", "fidelity", f"reconstructs at {m['psnr_db']:.1f} dB PSNR (threshold {o['min_psnr_db']:g} dB)", ("psnr_db",))
        elif m["kind"] == "signal":
            said = f"reconstructs with correlation {m['correlation']:.2f} and relative error {m['relative_error']:.2f}"
            if not (m["correlation"] >= o["min_signal_corr"] and m["relative_error"] <= o["max_signal_rel_error"]):
                add("fail", "fidelity", said, ("correlation", "relative_error"))
            elif m["correlation"] < o["warn_signal_corr"]:
                add("warn", "fidelity", said, ("correlation", "relative_error"))
        elif m["kind"] == "scalar" and "within_half_bin" in m and not m["within_half_bin"] >= o["min_within_half_bin"]:
            add("fail", "fidelity", f"decodes only {m['within_half_bin']:.1%} of values within half a bin "
                f"(max error {m['max_error_bins']:.2f} bins)", ("within_half_bin", "max_error_bins"))
        failing = [i for i, finding in enumerate(found) if finding.status == "fail"]
        if failing and not usage_problem:  # it uses its codes but fails: say where to look, on its first failure
            found[failing[0]] = replace(found[failing[0]], advice=(self.where_to_look(name, m["kind"]),))
        return found

    @staticmethod
    def where_to_look(name: str, kind: str) -> str:
        if kind == "scalar":
            return (f"codec '{name}': decode should return bin centres, low + (k + 0.5)·bin_width; "
                    "look for an offset (left edges) or a scale (bin width, range) mismatch.")
        return (f"codec '{name}' uses its codes but decodes poorly: look for a layout, scale or offset "
                "mismatch between encode and decode; if there is none, more codes add capacity (codebook-resize).")

    def judge(self, measurement: Measurement) -> list[Finding]:
        """Every codec's findings, codecs in declaration order; a pass naming each codec's fidelity when none has any."""
        m = measurement.metrics
        names = [key[: -len(".kind")] for key in m if key.endswith(".kind")]
        found = [finding for name in names for finding in self.codec_findings(name, m)]
        return found or [Finding("pass", "healthy", f"{len(names)} codec(s) round-trip: " + "; ".join(self.brief(n, m) for n in names),
                                 tuple(f"{n}.{k}" for n in names for k in ("codes_used", "num_codes")))]

    @staticmethod
    def brief(name: str, m: dict) -> str:
        fidelity = {"image": lambda: f"{m[name + '.psnr_db']:.1f} dB",
                    "signal": lambda: f"correlation {m[name + '.correlation']:.2f}",
                    "scalar": lambda: f"{m.get(name + '.within_half_bin', math.nan):.1%} within half a bin"}
        said = fidelity.get(m[name + ".kind"], lambda: "")()
        return f"'{name}' {said}, {m[name + '.codes_used']} of {m[name + '.num_codes']} codes used".replace(" ,", ",")
