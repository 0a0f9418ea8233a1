"""mean-collapse: is the model any better than predicting the training mean?"""
from __future__ import annotations

from ..check import Check, CheckContext
from ..numerics import mse, pearson, psnr_db, variance_ratio
from ..registry import register_check
from ..results import Evidence, Figure
from ..subject import Subject
from ..training import collect_predictions, data_range, target_mean


@register_check
class MeanCollapse(Check):
    """Mean-prediction detection: model PSNR against the PSNR of predicting the training mean.

    What it checks
    On the evaluation batches, the PSNR of the model against the PSNR of a trivial predictor that
    outputs the mean training target everywhere. Also the variance ratio Var(ŷ)/Var(y) and the
    Pearson correlation of predictions with targets.

    Why it matters
    A model stuck at the mean looks like it trains (the loss falls to Var(y)) but has learned
    nothing about the input: the seed's field model sat at ~6 dB, exactly the PSNR of predicting
    0.5 on near-binary fields. The gain over the mean predictor is ΔPSNR = -10·log10(1 - R²), so
    ΔPSNR < 1 dB means R² < 0.2. Raw PSNR hides this: low-variance data has a high mean-predictor
    PSNR. A model that is worse than the mean predictor fails too.

    Evidence
    Model and mean-predictor PSNR, their difference, variance ratio, correlation, and (when the
    subject declares a `grid_shape`) targets, predictions and errors of a few evaluation fields.

    Fixes
    random-queries when training queried other positions than evaluation does (see
    query-coverage); clamp-output to bound predictions to the target range; learnable-fourier
    when fixed coordinate frequencies do not fit the data.

    Options
    fail_below_db (1.0): fail when the model beats the mean predictor by less than this.
    warn_below_db (3.0): warn below this gain (R² < 0.5).
    max_batches (None): evaluation batches to use (None: all).
    """

    slug = "mean-collapse"
    code = "MD002"
    severity = "error"
    title = "Mean-prediction collapse"
    fixes = ("random-queries", "clamp-output", "learnable-fourier")
    default_options = {"fail_below_db": 1.0, "warn_below_db": 3.0, "max_batches": None, "train_batches_for_mean": 20}

    def requires(self, subject: Subject) -> str | None:
        if subject.task.kind != "regression":
            return f"needs a regression task (this subject's task is {subject.task.kind})"
        return None

    def measure(self, subject: Subject, ctx: CheckContext) -> Evidence:
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
        figures = [Figure("bar", "PSNR against the trivial predictor", {
            "labels": ["model", "mean predictor"], "values": [model_psnr, mean_psnr], "ylabel": "PSNR (dB)",
        })]
        grid = subject.capabilities.get("grid_shape")
        if grid:
            figures.append(self.field_figure(prediction, target, tuple(grid), subject.task.value_range))
        return Evidence(metrics=metrics, figures=figures)

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

    def judge(self, evidence: Evidence) -> tuple[str, str]:
        m, o = evidence.metrics, self.options
        said = (f"model {m['psnr_db']:.1f} dB vs {m['mean_baseline_psnr_db']:.1f} dB for predicting the training mean "
                f"({m['delta_db']:+.1f} dB; variance ratio {m['variance_ratio']:.2f}, correlation {m['correlation']:.2f})")
        if not m["delta_db"] >= o["fail_below_db"]:
            return "fail", f"no better than the mean: {said}"
        if m["delta_db"] < o["warn_below_db"]:
            return "warn", f"barely better than the mean: {said}"
        return "pass", f"beats the mean predictor: {said}"
