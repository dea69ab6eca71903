"MI estimators: cross-checks against slow direct implementations, independence vs dependence, symmetry, permutation invariance, gradients."
import math
import numpy as np
import pytest, torch
from hypothesis import given, settings, strategies as st
from mimbench.mi import (gaussian_gram, hsic, hsic_normalized, renyi_entropy, renyi_mi, mi_estimate, pairwise_sq_dists)

def _gram_slow(x, sigma, scale=True):
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    n, d = x.shape
    K = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            K[i, j] = math.exp(-((x[i] - x[j]) ** 2).sum() / (2 * sigma ** 2 * (d if scale else 1)))
    return K

def _hsic_slow(x, y, sigma):
    K, L = _gram_slow(x, sigma), _gram_slow(y, sigma)
    n = len(K); H = np.eye(n) - np.ones((n, n)) / n
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2

def _hsic_cca_slow(x, y, sigma, eps=1e-5):
    "The HSIC-bottleneck / MIMIR code, written out with explicit inverses."
    n = len(x); H = np.eye(n) - np.ones((n, n)) / n
    Kc, Lc = _gram_slow(x, sigma) @ H, _gram_slow(y, sigma) @ H
    Rx = Kc @ np.linalg.inv(Kc + eps * n * np.eye(n))
    Ry = Lc @ np.linalg.inv(Lc + eps * n * np.eye(n))
    return float((Rx * Ry.T).sum())

def _renyi_slow(x, y, sigma, alpha=1.01):
    def S(K):
        A = K / np.trace(K)
        lam = np.clip(np.linalg.eigvalsh(A), 0, None)
        return math.log2((lam ** alpha).sum()) / (1 - alpha)
    K, L = _gram_slow(x, sigma), _gram_slow(y, sigma)
    return S(K) + S(L) - S(K * L)

@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    return torch.randn(24, 3, 2, 2, generator=g), torch.randn(24, 5, generator=g)

def test_agrees_with_slow_direct_implementation(pair):
    x, y = pair
    np.testing.assert_allclose(gaussian_gram(x, 2.).numpy(), _gram_slow(x.numpy(), 2.), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gaussian_gram(x, 2., scale_by_dim=False).numpy(), _gram_slow(x.numpy(), 2., False), rtol=1e-5, atol=1e-6)
    assert hsic(x, y, 1.).item() == pytest.approx(_hsic_slow(x.numpy(), y.numpy(), 1.), rel=1e-4, abs=1e-7)
    assert hsic_normalized(x, y, 5.).item() == pytest.approx(_hsic_cca_slow(x.numpy(), y.numpy(), 5.), rel=1e-4)
    assert renyi_mi(x, y, 1.).item() == pytest.approx(_renyi_slow(x.numpy(), y.numpy(), 1.), rel=1e-3, abs=1e-4)

def test_pairwise_distances_match_cdist(pair):
    x = pair[0].flatten(1)
    torch.testing.assert_close(pairwise_sq_dists(x), torch.cdist(x, x) ** 2, atol=1e-4, rtol=1e-4)

def test_independence_near_zero_dependence_larger():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(128, 8, generator=g), torch.randn(128, 8, generator=g)
    dep = a + 0.3 * torch.randn(128, 8, generator=g)
    h_ind, h_dep = hsic(a, b, 1.), hsic(a, dep, 1.)
    assert h_ind < 0.35 * h_dep
    # the biased estimator's value under independence is O(1/N): it shrinks towards 0 with the batch
    a4, b4 = torch.randn(512, 8, generator=g), torch.randn(512, 8, generator=g)
    assert hsic(a4, b4, 1.) < 0.5 * h_ind
    r_ind, r_dep = renyi_mi(a, b, 2.), renyi_mi(a, dep, 2.)
    assert r_ind < 0.4 * r_dep
    n_ind, n_dep = hsic_normalized(a, b), hsic_normalized(a, dep)
    assert n_dep > 2 * n_ind

def test_symmetric_and_permutation_invariant(pair):
    x, y = pair
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(2))
    for f in (hsic, hsic_normalized, lambda a, b: renyi_mi(a, b, 1.)):
        v = f(x, y).item()
        assert f(y, x).item() == pytest.approx(v, rel=1e-4, abs=1e-7)
        assert f(x[perm], y[perm]).item() == pytest.approx(v, rel=1e-4, abs=1e-7)

def test_gradients_flow_to_both_arguments(pair):
    x, y = (t.clone().requires_grad_(True) for t in pair)
    for f in (hsic, hsic_normalized, lambda a, b: renyi_mi(a, b, 1.)):
        gx, gy = torch.autograd.grad(f(x, y), (x, y))
        assert torch.isfinite(gx).all() and torch.isfinite(gy).all() and gx.abs().sum() > 0 and gy.abs().sum() > 0

def test_works_under_bf16_autocast(pair):
    x, y = pair
    with torch.autocast('cpu', dtype=torch.bfloat16):
        v = mi_estimate('hsic', x, y)
    assert v.dtype == torch.float32 and v.item() == pytest.approx(hsic_normalized(x, y).item(), rel=1e-4)

def test_entropy_of_known_spectra():
    assert renyi_entropy(torch.eye(16)).item() == pytest.approx(4., abs=1e-3)
    assert renyi_entropy(torch.ones(16, 16)).item() == pytest.approx(0., abs=1e-3)

@settings(max_examples=15, deadline=None)
@given(n=st.integers(3, 12), d=st.integers(1, 6), seed=st.integers(0, 1000))
def test_hsic_is_nonnegative_and_bounded(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    assert hsic(x, y).item() >= -1e-7
    v = hsic_normalized(x, y).item()
    assert -1e-4 <= v <= n - 1 + 1e-3

def test_errors_are_clear():
    with pytest.raises(ValueError, match='same number of samples'): hsic_normalized(torch.rand(4, 2), torch.rand(5, 2))
    with pytest.raises(KeyError, match="Did you mean 'renyi'"): mi_estimate('reny', torch.rand(4, 2), torch.rand(4, 2))
    with pytest.raises(ValueError, match='alpha'): renyi_entropy(torch.eye(3), alpha=1.)
