"""mean-collapse: is the model any better than predicting the training mean?"""
from __future__ import annotations

import itertools

from ..core.check import Check, CheckContext
from ..core.registry import register_check
from ..core.results import Figure, Finding, Measurement
from ..core.subject import Head, Subject
from ..probes.numerics import mse, pearson, psnr_db, trivial_scores, variance_ratio
from ..probes.training import collect_predictions, data_range, target_mean


@register_check
class MeanCollapse(Check):
    """Mean-prediction detection: is every output head better than a trivial predictor?

    What it checks
    For a single-output regression subject: on the evaluation batches, the PSNR of the model
    against the PSNR of a trivial predictor that outputs the mean training target everywhere,
    plus the variance ratio Var(ŷ)/Var(y) and the Pearson correlation of predictions with targets.
    For every declared output head (capability `heads`), or the one output of a classification or
    token subject, against the trivial predictor of its kind:
    - regression: MAE against predicting the median training target, and correlation;
    - signal: the mean per-example correlation with the target (and relative error);
    - classification and tokens: cross-entropy against the entropy of the training label prior
      (what a model that learned only the prior scores), accuracy against the majority class.
    A head that does no better than its trivial predictor fails, and the finding names it.

    Why it matters
    A model stuck at the mean looks like it trains (the loss falls to Var(y)) but has learned
    nothing about the input: the seed's field model sat at ~6 dB, exactly the PSNR of predicting
    0.5 on near-binary fields. The gain over the mean predictor is ΔPSNR = -10·log10(1 - R²), so
    ΔPSNR < 1 dB means R² < 0.2. Raw PSNR hides this: low-variance data has a high mean-predictor
    PSNR. A model that is worse than the mean predictor fails too.

    Evidence
    Model and mean-predictor PSNR, their difference, variance ratio, correlation, and (when the
    subject declares a `grid_shape`) targets and predictions of a few evaluation fields. Per head:
    its metrics prefixed with the head name (`redshift.mae_ratio`, ...) and a table of every head
    against its trivial predictor.

    Fixes
    random-queries when training queried other positions than evaluation does (see
    query-coverage); clamp-output to bound predictions to the target range; learnable-fourier
    when fixed coordinate frequencies do not fit the data; codebook-reset when a collapsed
    tokenizer starves the heads (see codec-roundtrip).

    Options
    fail_below_db (1.0): fail when the model beats the mean predictor by less than this.
    warn_below_db (3.0): warn below this gain (R² < 0.5).
    fail_mae_ratio (0.9), warn_mae_ratio (0.7): regression heads, MAE / MAE of the median predictor.
    fail_signal_corr (0.2), warn_signal_corr (0.5): signal heads, mean per-example correlation.
    prior_margin (0.02): classification heads beat the prior when their loss is this fraction
        below its entropy; accuracy_margin (0.005): and when their accuracy beats the majority
        class by this much. Neither: fail; only one: warn.
    max_batches (None): evaluation batches to use (None: all).
    train_batches_for_mean (20): training batches that estimate the trivial predictors.
    """

    slug = "mean-collapse"
    code = "MD002"
    title = "Mean-prediction collapse"
    fixes = ("random-queries", "clamp-output", "learnable-fourier", "codebook-reset")
    default_options = {
        "fail_below_db": 1.0, "warn_below_db": 3.0, "fail_mae_ratio": 0.9, "warn_mae_ratio": 0.7,
        "fail_signal_corr": 0.2, "warn_signal_corr": 0.5, "prior_margin": 0.02, "accuracy_margin": 0.005,
        "max_batches": None, "train_batches_for_mean": 20,
    }

    def requires(self, subject: Subject) -> str | None:
        if subject.heads or subject.task.kind in ("regression", "classification", "tokens"):
            return None
        return f"needs declared output heads or a regression/classification task (this one is {subject.task.kind})"

    def measure(self, subject: Subject, ctx: CheckContext) -> Measurement:
        if subject.heads or subject.task.is_categorical:
            heads = subject.heads or {"output": Head(subject.task.kind, subject.predict, subject.task.num_classes)}
            return self.measure_heads(subject, heads, ctx)
        return self.measure_field(subject, ctx)

    def measure_heads(self, subject: Subject, heads: dict[str, Head], ctx: CheckContext) -> Measurement:
        train = lambda: itertools.islice(subject.train_batches, self.options["train_batches_for_mean"])  # noqa: E731
        metrics, rows = {"heads": list(heads)}, []
        for name, head in heads.items():
            prediction, target = collect_predictions(subject, max_batches=self.options["max_batches"], head=head)
            _, train_target = collect_predictions(subject, batches=train(), head=head)
            ctx.ensure_time(f"head {name}")
            scores = trivial_scores(head.kind, prediction, target, train_target, head.num_classes)
            metrics.update({f"{name}.{key}": value for key, value in scores.items()})
            metrics[f"{name}.kind"] = head.kind
            status, said = self.judge_head(head.kind, scores)
            metrics[f"{name}.status"] = status
            rows.append([name, head.kind, status, said])
        return Measurement(metrics=metrics, figures=lambda: [Figure(
            "table", "Each head against its trivial predictor", {"columns": ["head", "kind", "status", "evidence"], "rows": rows})])

    def measure_field(self, subject: Subject, ctx: CheckContext) -> Measurement:
        mean = target_mean(subject, self.options["train_batches_for_mean"])
        prediction, target = collect_predictions(subject, max_batches=self.options["max_batches"])
        ctx.ensure_time("evaluation")
        value_range = data_range(subject) if subject.task.value_range else float(target.max() - target.min()) or 1.0
        model_psnr = psnr_db(mse(prediction, target), value_range)
        mean_psnr = psnr_db(mse(mean.expand_as(target), target), value_range)
        metrics = {
            "psnr_db": model_psnr,
            "mean_baseline_psnr_db": mean_psnr,
            "delta_db": model_psnr - mean_psnr,
            "variance_ratio": variance_ratio(prediction, target),
            "correlation": pearson(prediction, target),
            "train_target_mean": float(mean),
            "eval_values": int(target.numel()),
        }
        grid, bounds = subject.capabilities.grid_shape, subject.task.value_range

        def figures() -> list[Figure]:
            bars = Figure("bar", "PSNR against the trivial predictor", {
                "labels": ["model", "mean predictor"], "values": [model_psnr, mean_psnr], "ylabel": "PSNR (dB)",
            })
            return [bars, self.field_figure(prediction, target, tuple(grid), bounds)] if grid else [bars]

        return Measurement(metrics=metrics, figures=figures)

    @staticmethod
    def field_figure(prediction, target, grid: tuple[int, int], value_range) -> Figure:
        pixels = grid[0] * grid[1]
        images = []
        for index in range(min(3, target.numel() // pixels)):
            window = slice(index * pixels, (index + 1) * pixels)
            t, p = target[window].reshape(grid), prediction[window].reshape(grid)  # (H, W)
            images += [
                {"label": f"target {index}", "pixels": t.tolist()},
                {"label": f"prediction {index}", "pixels": p.tolist()},
            ]
        low, high = value_range or (float(target.min()), float(target.max()))
        return Figure("images", "Evaluation fields: target and prediction", {"images": images, "vmin": low, "vmax": high})

    def judge_head(self, kind: str, m: dict) -> tuple[str, str]:
        """(status, evidence text) of one head's scores against its trivial predictor."""
        o = self.options
        if kind in ("classification", "tokens"):
            beats_prior = m["loss"] <= (1 - o["prior_margin"]) * m["prior_entropy"]
            beats_majority = m["accuracy"] >= m["majority_accuracy"] + o["accuracy_margin"]
            status = "pass" if beats_prior and beats_majority else "warn" if beats_prior or beats_majority else "fail"
            return status, (f"loss {m['loss']:.3f} vs {m['prior_entropy']:.3f} for the label prior, "
                            f"accuracy {m['accuracy']:.1%} vs {m['majority_accuracy']:.1%} for the majority class")
        if kind == "signal":
            corr = m["correlation"]
            status = "fail" if not corr >= o["fail_signal_corr"] else "warn" if corr < o["warn_signal_corr"] else "pass"
            return status, f"correlation with the target {corr:.2f} (relative error {m['relative_error']:.2f})"
        ratio = m["mae_ratio"]
        status = "fail" if not ratio < o["fail_mae_ratio"] else "warn" if ratio >= o["warn_mae_ratio"] else "pass"
        return status, f"MAE {m['mae']:.3g} vs {m['median_mae']:.3g} for the median (ratio {ratio:.2f}), correlation {m['correlation']:.2f}"

    def judge(self, measurement: Measurement) -> list[Finding]:
        """Heads: one finding per failing/warning level, naming its heads (a pass when all beat their
        trivial predictors). A single output: one finding on its gain over the mean predictor."""
        m, o = measurement.metrics, self.options
        if "heads" in m:
            return self.judge_heads(m)
        said = (f"model {m['psnr_db']:.1f} dB vs {m['mean_baseline_psnr_db']:.1f} dB for predicting the training mean "
                f"({m['delta_db']:+.1f} dB; variance ratio {m['variance_ratio']:.2f}, correlation {m['correlation']:.2f})")
        keys = ("delta_db", "psnr_db", "mean_baseline_psnr_db", "variance_ratio", "correlation")
        if not m["delta_db"] >= o["fail_below_db"]:  # `not >=`: a NaN gain fails
            return [Finding("fail", "collapsed", f"no better than the mean: {said}", keys, self.fixes)]
        if m["delta_db"] < o["warn_below_db"]:
            return [Finding("warn", "barely-better", f"barely better than the mean: {said}", keys, self.fixes)]
        return [Finding("pass", "beats-trivial", f"beats the mean predictor: {said}", keys)]

    def judge_heads(self, m: dict) -> list[Finding]:
        # Each head is judged again from its scores, so the verdicts follow this check's options.
        scores = {name: {k[len(name) + 1:]: v for k, v in m.items() if k.startswith(name + ".")} for name in m["heads"]}
        verdicts = {name: self.judge_head(scores[name]["kind"], scores[name]) for name in m["heads"]}  # {name: (status, said)}
        found = []
        for status, kind, verdict in (("fail", "collapsed", "no better than"), ("warn", "barely-better", "barely better than")):
            named = [name for name, (s, _) in verdicts.items() if s == status]
            if not named:
                continue
            which, said = ", ".join(f"'{n}'" for n in named), verdicts[named[0]][1]
            message = (f"head {which} is {verdict} its trivial predictor: {said}" if len(named) == 1 else
                       f"heads {which} are {verdict} their trivial predictors; '{named[0]}': {said}")
            rests_on = tuple(f"{n}.{k}" for n in named for k in scores[n] if k not in ("kind", "status"))
            found.append(Finding(status, kind, message, rests_on, self.fixes))
        return found or [Finding("pass", "beats-trivial", f"every head beats its trivial predictor "
                                 f"({len(verdicts)} head{'s' * (len(verdicts) > 1)})", tuple(f"{n}.status" for n in verdicts))]
