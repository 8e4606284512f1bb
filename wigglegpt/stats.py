"""
The few statistics the comparisons report (compare_bio.py across training runs, xor_bio.py --suite
across seeds): mean and sample standard deviation, Student's t quantile computed exactly (no
scipy), and the paired difference of two sets of seeds with its confidence interval.
"""

import math


def mean_std(values):
    """(mean, sample standard deviation with n-1) of values; the std is None for one value."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def t_central_prob(t, df):
    """P(|T| <= t) for Student's t with df (a whole number >= 1) degrees of freedom.

    The finite sums of Abramowitz & Stegun 26.7.3 (df odd) and 26.7.4 (df even) in
    theta = atan(t / sqrt(df)): exact, no special functions needed.
    """
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: 2/pi * (theta + sin(theta) cos(theta) * (1 + 2/3 c^2 + 2*4/(3*5) c^4 + ...))
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2.0 / math.pi * (theta + s * math.cos(theta) * total)
    term, total = 1.0, 1.0  # even: sin(theta) * (1 + 1/2 c^2 + 1*3/(2*4) c^4 + ...)
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def t_quantile(p, df):
    """The p quantile of Student's t with df degrees of freedom, for 0.5 <= p < 1 (bisection
    on t_central_prob to 1e-12; e.g. t_quantile(0.975, 2) = 4.303)."""
    if not 0.5 <= p < 1.0 or df < 1 or int(df) != df:
        raise ValueError(f"t_quantile needs 0.5 <= p < 1 and a whole df >= 1, got p={p}, df={df}")
    target, lo, hi = 2.0 * p - 1.0, 0.0, 1.0
    while t_central_prob(hi, int(df)) < target:
        hi *= 2.0
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_central_prob(mid, int(df)) < target else (lo, mid)
    return 0.5 * (lo + hi)


def paired_difference(base, other, level=0.95):
    """Per-seed differences other - base over the seeds both have ({seed: value} dicts), their
    mean and its Student t confidence interval (None below two pairs)."""
    seeds = sorted(set(base) & set(other))
    diffs = [other[s] - base[s] for s in seeds]
    if not diffs:
        return None
    mean, sd = mean_std(diffs)
    if sd is None:
        return dict(seeds=seeds, diffs=diffs, mean=mean, sd=None, low=None, high=None, df=0)
    half = t_quantile(0.5 + level / 2.0, len(diffs) - 1) * sd / math.sqrt(len(diffs))
    return dict(seeds=seeds, diffs=diffs, mean=mean, sd=sd, low=mean - half, high=mean + half, df=len(diffs) - 1)
