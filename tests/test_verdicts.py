"""The verdicts the tutorials print ('held', 'not held', 'inconclusive') against answers computed here independently:
exact binomial tails by hand for McNemar near α, the pairing of seeds, the direction of every test, and the unpaired
(Wilson, Welch) branches. Each case is built so that a plausible bug gives another answer (noted beside it)."""
import math
import numpy as np
import pytest
from mimbench.results import PROTOCOLS, make_record, wilson_interval
from mimbench.reproduce import compare_records, verdict

Z95 = 1.959963984540054


def rec(flags:dict, seed:int=0, digest:str|None='d0', extra:dict|None=None, method='m'):
    ev = {'runs': [], 'dataset': 'fashion-mnist', 'split': 'test', 'sample_digest': digest}
    return make_record(method, PROTOCOLS['clean-ft'], ev, seed, flags, extra)


def discordant(only_a:int, only_b:int, both:int=50, neither:int=30):
    "Paired flags with exactly `only_a` images right only for a and `only_b` only for b."
    a = np.r_[np.ones(only_a), np.zeros(only_b), np.ones(both), np.zeros(neither)].astype(bool)
    b = np.r_[np.zeros(only_a), np.ones(only_b), np.ones(both), np.zeros(neither)].astype(bool)
    return a, b


def two_sided_binomial(k:int, n:int) -> float:
    "2 · P(X ≤ min(k, n − k)) for X ~ Bin(n, 1/2), capped at 1: McNemar's exact p, by hand."
    return min(1., 2 * sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2 ** n)


@pytest.mark.parametrize('only_a,only_b,want', [
    (20, 9, 'inconclusive'),     # p = 0.061 (a one-sided test, p = 0.031, would say held)
    (20, 8, 'held'),             # p = 0.036 (α = 0.01 would say inconclusive)
    (8, 20, 'not held'),         # the same, b ahead (a test blind to the direction would say held)
    (0, 0, 'inconclusive'),      # no discordant image at all
])
def test_mcnemar_near_alpha(only_a, only_b, want):
    a, b = discordant(only_a, only_b)
    cr = compare_records([rec({'clean': a})], [rec({'clean': b})], 'clean')
    assert (cr['test'], cr['only_a'], cr['only_b'], cr['verdict']) == ('mcnemar', only_a, only_b, want)
    n = only_a + only_b
    assert cr['p'] == pytest.approx(two_sided_binomial(only_a, n) if n else 1.0, rel=1e-9)
    assert cr['acc_a'] == pytest.approx(a.mean()) and cr['acc_b'] == pytest.approx(b.mean())


def test_mcnemar_pools_the_seeds_pairing_each_with_its_own():
    "Seeds given in different orders on the two sides; each seed's flags are paired with the same seed's."
    a0, b0 = discordant(12, 4)                   # seed 0: a ahead
    a1, b1 = discordant(9, 3, both=54)           # seed 1: a ahead; the same n (96), so a mix-up would still pair
    cr = compare_records([rec({'clean': a1}, 1, 'd1'), rec({'clean': a0}, 0, 'd0')],
                         [rec({'clean': b0}, 0, 'd0'), rec({'clean': b1}, 1, 'd1')], 'clean')
    assert sorted(cr['seeds']) == [0, 1] and (cr['only_a'], cr['only_b']) == (21, 7)    # seed 0 alone: 12 vs 4
    assert cr['p'] == pytest.approx(two_sided_binomial(21, 28)) and cr['verdict'] == 'held'
    crossed = [((a0 & ~b1).sum() + (a1 & ~b0).sum(), (~a0 & b1).sum() + (~a1 & b0).sum())]    # seeds paired the wrong way
    assert crossed != [(21, 7)]


def test_other_test_images_are_not_paired():
    "Records of different test samples (digests) are compared unpaired, by their Wilson intervals."
    hi, lo = np.arange(400) % 10 < 8, np.arange(400) % 10 < 6          # 80 % vs 60 % of 400
    cr = compare_records([rec({'clean': hi}, 0, 'dA')], [rec({'clean': lo}, 0, 'dB')], 'clean')
    assert cr['test'] == 'wilson-intervals' and cr['verdict'] == 'held'
    assert cr['interval_a'] == pytest.approx(wilson_interval(320, 400)) and cr['interval_b'] == pytest.approx(wilson_interval(240, 400))
    assert verdict([rec({'clean': lo}, 0, 'dA')], [rec({'clean': hi}, 0, 'dB')], 'clean') == 'not held'
    close = np.arange(400) % 10 < 7                                      # 70 % vs 80 %: the intervals are apart
    assert verdict([rec({'clean': close}, 0, 'dA')], [rec({'clean': hi}, 0, 'dB')], 'clean') == 'not held'
    near = np.arange(400) % 20 < 15                                      # 75 % vs 80 %: they overlap
    assert verdict([rec({'clean': near}, 0, 'dA')], [rec({'clean': hi}, 0, 'dB')], 'clean') == 'inconclusive'


def shares(cells_right, cells:int, seed=0, digest='d0'):
    "A record whose mCA per image is `cells_right / cells` (as `eval_shift` keeps it), with dummy clean flags."
    cells_right = np.asarray(cells_right)
    return rec({'clean': np.ones(len(cells_right), bool)}, seed, digest,
               {'corrupt_correct': cells_right.tolist(), 'cells': cells, 'mCA': float(cells_right.mean() / cells)})


def test_welch_for_unpaired_shares():
    rng = np.random.default_rng(0)
    xa, xb = rng.integers(20, 41, 300), rng.integers(15, 36, 300)       # of 40 cells: means ~0.75 vs ~0.625
    cr = compare_records([shares(xa, 40, digest='dA')], [shares(xb, 40, digest='dB')], 'mCA')
    pa, pb = xa / 40, xb / 40
    delta = pa.mean() - pb.mean()
    se = math.sqrt(pa.var(ddof=1) / 300 + pb.var(ddof=1) / 300)
    assert cr['test'] == 'welch' and cr['delta'] == pytest.approx(delta)
    assert cr['interval'] == pytest.approx([delta - Z95 * se, delta + Z95 * se]) and cr['verdict'] == 'held'
    assert verdict([shares(xb, 40, digest='dA')], [shares(xa, 40, digest='dB')], 'mCA') == 'not held'
    assert verdict([shares(xa, 40, digest='dA')], [shares(xa[::-1], 40, digest='dB')], 'mCA') == 'inconclusive'


def test_paired_t_for_shares_on_the_same_images():
    rng = np.random.default_rng(1)
    xb = rng.integers(10, 31, 200)
    xa = np.minimum(xb + rng.integers(0, 3, 200), 40)                   # a gets 0–2 more cells right on every image
    cr = compare_records([shares(xa, 40)], [shares(xb, 40)], 'mCA')
    d = (xa - xb) / 40
    assert cr['test'] == 'paired-t' and cr['delta'] == pytest.approx(d.mean()) and cr['n'] == 200
    assert cr['verdict'] == 'held' and verdict([shares(xb, 40)], [shares(xa, 40)], 'mCA') == 'not held'


def test_no_per_image_results_is_inconclusive_with_the_reason():
    cr = compare_records([rec({'clean': np.ones(10, bool)})], [rec({'clean': np.zeros(10, bool)})], 'robust@8/255')
    assert cr['verdict'] == 'inconclusive' and cr['test'] is None and 'robust@8/255' in cr['reason']


def test_a_pooled_verdict_stands_only_when_every_seed_agrees():
    """McNemar pools the seeds' paired images, which speaks for those trained models; the verdict on the method needs each
    seed's own Δ to point the same way (a rule that only looked at the pooled p would say held here)."""
    a0, b0 = discordant(30, 2)                                   # seed 0: a far ahead
    a1, b1 = discordant(3, 5)                                    # seed 1: b a little ahead
    cr = compare_records([rec({'clean': a0}, 0, 'd0'), rec({'clean': a1}, 1, 'd1')],
                         [rec({'clean': b0}, 0, 'd0'), rec({'clean': b1}, 1, 'd1')], 'clean')
    assert (cr['only_a'], cr['only_b']) == (33, 7) and cr['p'] == pytest.approx(two_sided_binomial(33, 40))
    assert cr['pooled_verdict'] == 'held' and cr['verdict'] == 'inconclusive'
    assert cr['per_seed'] == pytest.approx({0: 28 / 112, 1: -2 / 88})
    swapped = compare_records([rec({'clean': b0}, 0, 'd0'), rec({'clean': b1}, 1, 'd1')],
                              [rec({'clean': a0}, 0, 'd0'), rec({'clean': a1}, 1, 'd1')], 'clean')
    assert (swapped['pooled_verdict'], swapped['verdict']) == ('not held', 'inconclusive')
    a1, b1 = discordant(5, 3)                                    # seed 1 now agrees: the pooled verdict stands
    agree = compare_records([rec({'clean': a0}, 0, 'd0'), rec({'clean': a1}, 1, 'd1')],
                            [rec({'clean': b0}, 0, 'd0'), rec({'clean': b1}, 1, 'd1')], 'clean')
    assert agree['verdict'] == agree['pooled_verdict'] == 'held'
    assert verdict([rec({'clean': a0}, 0, 'd0')], [rec({'clean': b0}, 0, 'd0')], 'clean') == 'held'   # one seed: its own test
