"Frequency analysis: spectra, filters, Fourier heat maps, perturbation spectra (TTFP: test_ttfp.py)."
import math
import pytest, torch
from torch import nn
from mimbench.frequency import (fft2c, ifft2c, frequency_grid, band_mask, spectrum, radial_profile, energy_fraction,
                                filter_images, fourier_basis, fourier_heatmap, perturbation_spectrum, filtered_accuracy)

def wave(fy, fx, h=32, w=32, amp=0.3):
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing='ij')
    return (0.5 + amp * torch.cos(2 * math.pi * (fy * yy / h + fx * xx / w))).float()[None, None]

@pytest.mark.parametrize('fy,fx', [(0, 1), (3, 5), (-7, 2), (15, -15), (16, 0)])
def test_pure_sinusoid_shows_in_its_bin(fy, fx):
    FY, FX, _ = frequency_grid(32, 32)
    s = spectrum(wave(fy, fx) - 0.5)
    hit = s > 1e-3 * s.max()
    got = {(int(a), int(b)) for a, b in zip(FY[hit], FX[hit])}
    mirror = ((-fy + 16) % 32 - 16, (-fx + 16) % 32 - 16)      # the conjugate bin, wrapped into [-16, 15]
    own = ((fy + 16) % 32 - 16, (fx + 16) % 32 - 16)
    assert got == {own, mirror}
    # the closed-form basis is the same wave, unit norm
    u = fourier_basis(32, 32, fy, fx)
    torch.testing.assert_close(u.norm(), torch.tensor(1.))
    torch.testing.assert_close(u / u.abs().max(), ((wave(fy, fx)[0, 0] - 0.5) / 0.3), atol=1e-5, rtol=0)

def test_fft_conventions():
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(fft2c(x).abs().pow(2).sum(), x.pow(2).sum())          # orthonormal: Parseval
    torch.testing.assert_close(ifft2c(fft2c(x)).real, x)
    torch.testing.assert_close(fft2c(x)[..., 16, 16].real, x.sum((-2, -1)) / 32)     # DC in the middle
    torch.testing.assert_close(fft2c(torch.ones(1, 1, 8, 6))[0, 0].abs().argmax(), torch.tensor(4 * 6 + 3))

def test_low_pass_removes_high_bins_and_filters_split_the_image():
    torch.manual_seed(0)
    x = torch.rand(8, 1, 32, 32)
    r = frequency_grid(32, 32)[2]
    for c in (2, 5.5, 10):
        low = filter_images(x, 'low', c, clip=False)
        assert fft2c(low).abs()[..., r > c].max() < 1e-5
        assert (fft2c(low) - fft2c(x)).abs()[..., r <= c].max() < 1e-4
        high = filter_images(x, 'high', c, keep_dc=False, clip=False)
        assert fft2c(high).abs()[..., r <= c].max() < 1e-5
        torch.testing.assert_close(low + high, x, atol=1e-5, rtol=0)
    band = filter_images(x, 'band', band=(3, 7), keep_dc=False, clip=False)
    assert fft2c(band).abs()[..., (r <= 3) | (r > 7)].max() < 1e-5
    kept = filter_images(x, 'high', 4)                                               # default: keeps mean, clipped
    assert kept.min() >= 0 and kept.max() <= 1
    with pytest.raises(ValueError, match='low < high'): band_mask(32, 32, 5, 5)
    with pytest.raises(ValueError, match='cutoff'): filter_images(x, 'low')

def test_radial_profile_and_energy_fraction():
    s = torch.zeros(32, 32); s[16, 16 + 7] = 1.
    prof = radial_profile(s)
    assert prof.argmax() == 7 and prof.sum() > 0 and len(prof) == round(math.hypot(16, 16)) + 1
    torch.testing.assert_close(radial_profile(torch.ones(32, 32)), torch.ones(len(prof)))
    e = energy_fraction(torch.cat([wave(0, 3), wave(0, 9)]) - 0.5, 5)
    torch.testing.assert_close(e, torch.tensor([0., 1.]), atol=1e-6, rtol=0)

class FrequencyDetector(nn.Module):
    "Wrong (class 1) exactly when the image has energy along one Fourier basis image."
    def __init__(self, fy, fx):
        super().__init__(); self.register_buffer('u', fourier_basis(32, 32, fy, fx))
    def forward(self, x):
        a = ((x - 0.5)[:, 0] * self.u).sum((-2, -1)).abs()
        return torch.stack([torch.ones_like(a), 4 * a], 1)

def test_fourier_heatmap_finds_the_vulnerable_frequency():
    m = FrequencyDetector(-2, 6).eval()
    data = (torch.full((6, 1, 32, 32), 0.5), torch.zeros(6, dtype=torch.long))
    hm = fourier_heatmap(m, data, eps=1., progress=False)
    assert hm[16 - 2, 16 + 6] == 1 and hm[16 + 2, 16 - 6] == 1 and hm.nansum() == 2
    part = fourier_heatmap(m, data, eps=1., max_freq=3, progress=False)
    assert part.isnan().sum() == 32 * 32 - 7 * 7 and part.nansum() == 0

def test_attack_spectrum_follows_the_gradient():
    m = FrequencyDetector(4, 4).eval()
    x = 0.5 + 0.01 * fourier_basis(32, 32, 4, 4).expand(3, 1, 32, 32)
    for attack, norm, eps in [('pgd', 'l2', 1.), ('fgsm', 'l2', 1.), ('bim', 'l2', 0.5)]:
        r = perturbation_spectrum(m, (x, torch.zeros(3, dtype=torch.long)), attack, eps, norm, **({'random_start': False} if attack == 'pgd' else {}))
        assert r['attack'] == attack and r['n_moved'] == 3 and r['fool_rate'] == 1.
        torch.testing.assert_close(energy_fraction(r['delta'], 5, 6), torch.ones(3), atol=1e-4, rtol=0)   # radius 4√2 ≈ 5.66
    with pytest.raises(KeyError, match='Unknown attack'): perturbation_spectrum(m, (x, torch.zeros(3, dtype=torch.long)), 'pgdd')

def test_filtered_accuracy_on_a_real_model(quick_model, fmnist_test):
    r = filtered_accuracy(quick_model, fmnist_test, 'low', cutoffs=[0, 23], n=200)
    assert r['accuracy'][1] == r['clean'] and r['accuracy'][0] < 0.3 and r['n'] == 200

def test_filtered_accuracy_is_the_share_of_right_answers(quick_model, fmnist_test):
    "Each point is `train.accuracy` on the filtered images: the count of right answers over n, checked by hand."
    x, y = fmnist_test.get_batch(range(300))
    r = filtered_accuracy(quick_model, fmnist_test, 'high', cutoffs=[2, 6], n=300, batch_size=128)
    with torch.no_grad():
        for c, acc in zip([2, 6], r['accuracy']):
            assert acc == (quick_model(filter_images(x, 'high', c)).argmax(1) == y).sum().item() / 300
        assert r['clean'] == (quick_model(x).argmax(1) == y).sum().item() / 300
    with pytest.raises(ValueError, match=r'must lie in \[0,1\]'): filtered_accuracy(quick_model, fmnist_test, 'high', [4], n=20, clip=False)
