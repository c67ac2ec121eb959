"""Temperature and abstention fitting (edgekit.converters.calibrate) and their application on the
device (edgekit.runtime.calibration). numpy only: these run on the base install's dependencies.

The data are synthetic MC samples with a known miscalibration: labels are drawn from a "true"
softmax(z), and the model's samples report softmax(z * sharpness + noise), so the temperature
that undoes it is known.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgekit.converters.calibrate import (
    MIN_EXAMPLES,
    SmallHeldOutWarning,
    _nll_and_grad,
    class_metrics,
    fit_abstention,
    fit_noise_variance,
    fit_temperature,
    fit_variance_scale,
    risk_coverage,
)
from edgekit.errors import EdgekitError, InvalidArgumentError
from edgekit.runtime.calibration import Abstention, Temperature, mutual_information


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _samples(n=3000, t=30, c=5, sharpness=0.6, noise=0.3, seed=0):
    """(per-sample probs [n, t, c], labels): the samples are softmax(z * sharpness + noise)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.5, (n, c))
    y = np.array([rng.choice(c, p=p) for p in _softmax(z)])
    per = _softmax(z[:, None, :] * sharpness + noise * rng.standard_normal((n, t, c)))
    return per, y


def test_nll_gradient_is_exact():
    # The gradient drives the fit: it must match central differences (1e-6 steps; agreement to
    # 1e-5 relative leaves room for float64 rounding only).
    per, y = _samples(n=200, t=8)
    log_p, mi = np.log(per + 1e-12), mutual_information(per)
    for a, b in [(0.0, 0.0), (-0.4, 1.3), (0.5, 0.2)]:
        _, grad = _nll_and_grad(log_p, mi, y, a, b)
        h = 1e-6
        num = [(_nll_and_grad(log_p, mi, y, a + h, b)[0] - _nll_and_grad(log_p, mi, y, a - h, b)[0]) / (2 * h),
               (_nll_and_grad(log_p, mi, y, a, b + h)[0] - _nll_and_grad(log_p, mi, y, a, b - h)[0]) / (2 * h)]
        np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-9)


def test_plain_temperature_undoes_a_known_underconfidence():
    # Samples are softmax(0.6 z + noise): the model is under-confident; the MC mean wants a
    # temperature below 0.6 (noise averages out, but not exactly: the mean of softmaxes is flatter
    # than the softmax of the mean). The fit must sharpen, and lower NLL and ECE.
    per, y = _samples()
    fit = fit_temperature(per, y, mi_aware=False)
    assert fit.applied
    assert 0.3 < fit.fitted.temperature < 0.65
    assert fit.fitted.mi_slope == 0.0
    assert fit.after["nll"] < fit.before["nll"] - 0.01
    assert fit.after["ece"] < fit.before["ece"]
    assert fit.after["accuracy"] == pytest.approx(fit.before["accuracy"], abs=0.005)  # a temperature keeps argmaxes


def test_a_calibrated_model_gets_no_sharpening():
    # Samples drawn exactly from the labels' distribution (sharpness 1, no noise): the best
    # temperature is 1 within the fit's statistical error (+-0.05 at 3000 examples).
    per, y = _samples(sharpness=1.0, noise=0.0, t=4)
    fit = fit_temperature(per, y, mi_aware=False)
    assert fit.fitted.temperature == pytest.approx(1.0, abs=0.05)


def test_mi_aware_fit_is_no_worse_than_plain_and_keeps_slope_non_negative():
    per, y = _samples()
    plain = fit_temperature(per, y, mi_aware=False)
    aware = fit_temperature(per, y, mi_aware=True)
    assert aware.fitted.mi_slope >= 0.0
    # The plain temperature is a point of the MI-aware family: the optimum can only be lower.
    assert aware.after["nll"] <= plain.after["nll"] + 1e-6


def test_a_fit_that_does_not_lower_held_out_nll_is_not_applied():
    # Labels independent of the samples: any temperature fits noise, but cannot lower the NLL of
    # a model that already outputs the uniform-ish prior; the fit must then say so.
    rng = np.random.default_rng(3)
    per = np.full((800, 4, 3), 1 / 3)
    y = rng.integers(0, 3, 800)
    fit = fit_temperature(per, y)
    assert not fit.applied and fit.calibration is None
    assert "not applied" in fit.reason


def test_small_held_out_split_is_refused_unless_forced():
    per, y = _samples(n=MIN_EXAMPLES - 1, t=4)
    with pytest.raises(InvalidArgumentError, match=f"Expected at least {MIN_EXAMPLES}"):
        fit_temperature(per, y)
    with pytest.warns(SmallHeldOutWarning):
        fit = fit_temperature(per, y, force=True)
    assert fit.examples == MIN_EXAMPLES - 1


@pytest.mark.parametrize(
    "labels, message",
    [
        (lambda y: y + 5, r"Expected held-out labels in \[0, 4\]"),
        (lambda y: y.astype(float) + 0.5, "Expected integer held-out labels"),
        (lambda y: y[:-1], "Expected one held-out label per input"),
    ],
)
def test_bad_labels_get_expected_received(labels, message):
    per, y = _samples(n=600, t=3)
    with pytest.raises(EdgekitError, match=message):
        fit_temperature(per, labels(y))


def test_nan_probabilities_are_refused():
    per, y = _samples(n=600, t=3)
    per[3, 1, 2] = np.nan
    with pytest.raises(InvalidArgumentError, match=r"Expected held-out probabilities in \[0, 1\]"):
        fit_temperature(per, y)


def test_temperature_applies_per_sample_and_equals_logit_scaling():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (6, 9, 4))
    probs = _softmax(logits)
    cal = Temperature(math.log(0.7))
    np.testing.assert_allclose(cal.apply(probs), _softmax(logits / 0.7), atol=1e-9)
    # MI-aware: each input gets its own temperature exp(a + b * MI).
    cal = Temperature(math.log(0.7), 2.0)
    mi = mutual_information(probs)
    want = _softmax(logits / (0.7 * np.exp(2.0 * mi))[:, None, None])
    np.testing.assert_allclose(cal.apply(probs), want, atol=1e-9)


def test_temperature_round_trips_through_metadata_form():
    cal = Temperature(math.log(0.81), 1.5)
    again = Temperature.from_dict(cal.to_dict())
    assert again.temperature == pytest.approx(0.81) and again.mi_slope == 1.5
    with pytest.raises(InvalidArgumentError, match="Expected a positive calibration temperature"):
        Temperature.from_dict({"method": "temperature", "temperature": -1})
    with pytest.raises(InvalidArgumentError, match="Expected a calibration entry"):
        Temperature.from_dict({"method": "vector"})
    with pytest.raises(InvalidArgumentError, match="mi_slope"):
        Temperature(0.0, -0.1)


@pytest.mark.parametrize("score", ["entropy", "confidence"])
def test_abstention_threshold_hits_its_coverage_on_fresh_data(score):
    # Fitted on one sample of inputs, applied to another from the same distribution: coverage
    # within 2 points of the target (binomial SE at n=3000 is 0.55 points; 2 points is ~3.6 SE).
    per, y = _samples(seed=0)
    per2, y2 = _samples(seed=1)
    ab = fit_abstention(per.mean(axis=1), y, score=score, target_coverage=0.9)
    assert ab.heldout_coverage == pytest.approx(0.9, abs=0.002)
    kept = ~ab.abstain(per2.mean(axis=1))
    assert abs(kept.mean() - 0.9) < 0.02
    # Answering only the surer 90% must be more accurate than answering all.
    m2 = per2.mean(axis=1)
    assert (m2[kept].argmax(1) == y2[kept]).mean() > (m2.argmax(1) == y2).mean()
    assert Abstention.from_dict(ab.to_dict()) == ab


def test_risk_coverage_curve_and_aurc():
    correct = np.array([True, True, False, True, False])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    coverage, risk, aurc = risk_coverage(scores, correct)
    np.testing.assert_allclose(coverage, [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(risk, [0, 0, 1 / 3, 1 / 4, 2 / 5])
    assert aurc == pytest.approx(np.mean([0, 0, 1 / 3, 1 / 4, 2 / 5]))


def test_class_metrics_brier_of_a_perfect_and_a_uniform_model():
    y = np.array([0, 1, 2])
    perfect = np.eye(3)
    uniform = np.full((3, 3), 1 / 3)
    assert class_metrics(perfect, y)["brier"] == pytest.approx(0.0)
    assert class_metrics(uniform, y)["brier"] == pytest.approx(2 / 3)  # (2/3)^2 + 2 * (1/3)^2


def _regression(n=2000, t=40, noise_sd=0.5, epi_sd=0.2, seed=0):
    """Samples of a value model whose MC spread is epi_sd around a mean that misses the target by
    N(0, noise_sd^2): the right noise variance is noise_sd^2."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(0, 2, n)
    y = truth + rng.normal(0, noise_sd, n)
    samples = truth[:, None] + rng.normal(0, epi_sd, (n, t))
    return samples, y


def test_noise_variance_recovers_the_target_noise():
    samples, y = _regression()
    fit = fit_noise_variance(samples, y)
    # The residuals are N(0, 0.25) plus the sample mean's own error (0.2^2 / 40, negligible);
    # the epistemic variance 0.04 is already in the predictive variance, so the noise variance
    # comes out near 0.25 - 0.04 = 0.21 (+-0.02: its SE at 2000 residuals is 0.25*sqrt(2/2000) = 0.008).
    assert fit.noise_variance[0] == pytest.approx(0.21, abs=0.02)
    assert fit.after["nll"] < fit.before["nll"]


def test_variance_scale_is_the_closed_form_optimum():
    samples, y = _regression(n=1500)
    aleatoric = np.full(samples.shape, 0.05)  # a head that under-states its noise five-fold
    fit = fit_variance_scale(samples[..., None], aleatoric[..., None], y[:, None])
    total = samples.var(axis=1) + 0.05
    assert fit.variance_scale == pytest.approx(float(((y - samples.mean(1)) ** 2 / total).mean()))
    assert fit.variance_scale > 2.5  # true total ~0.25 over a stated ~0.09
    assert fit.after["nll"] < fit.before["nll"]


def test_value_fits_check_their_inputs():
    samples, y = _regression(n=600)
    with pytest.raises(InvalidArgumentError, match=r"Expected held-out targets of shape \(600, 1\)"):
        fit_noise_variance(samples, y[:10])
    bad = samples.copy()
    bad[0, 0] = np.inf
    with pytest.raises(InvalidArgumentError, match="Expected finite held-out value samples"):
        fit_noise_variance(bad, y)
    with pytest.raises(InvalidArgumentError, match="too small"):
        fit_noise_variance(samples[:100], y[:100])
