"""What De³ costs: images/s of De³ inference and of one EOT-PGD step through it, vs plain classifier inference, same run.

    python bench/de3.py [--preset micro] [--batch 128] [--eot 20] [--repeats 5] [--device cpu|cuda]

Weights are random (speed does not depend on them). Prints a table and the ratios a user pays for the defence.
"""
import argparse, time
import torch
from mimbench.models import create_mae, create_vit
from mimbench.defenses import De3
from mimbench.attacks import perturb, classifier_loss
from mimbench.core import get_device


def best_rate(fn, n_images, repeats, device):
    "Images per second of `fn` (best of `repeats` after one warm-up)."
    fn()
    best = float('inf')
    for _ in range(repeats):
        if device.type == 'cuda': torch.cuda.synchronize()
        t0 = time.perf_counter(); fn()
        if device.type == 'cuda': torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return n_images / best


def measure(preset='micro', batch=128, eot=20, repeats=5, sigma=70., channels=1, device=None):
    "Images/s of classifier and De³ inference and of a PGD step (EOT through De³): dict."
    device = get_device(device)
    torch.manual_seed(0)
    c = channels
    clf = create_vit(preset, 32, 4, c).to(device).eval()
    den = create_mae(preset, 32, 4, c, norm_pix_loss=False).to(device).eval()
    de3 = De3(den, clf, sigma).eval()
    x = torch.rand(batch, c, 32, 32, device=device); y = torch.randint(0, 10, (batch,), device=device)
    for m in (clf, de3): m.requires_grad_(False)

    def infer(model):
        with torch.no_grad(): model(x)

    def eot_pgd_step(model, eot):
        return perturb(classifier_loss(model, y), x, 4 / 255, 'linf', steps=1, alpha=2 / 255, random_start=False, eot=eot)

    return {
        'classifier inference': best_rate(lambda: infer(clf), batch, repeats, device),
        'De³ inference': best_rate(lambda: infer(de3), batch, repeats, device),
        'classifier PGD step': best_rate(lambda: eot_pgd_step(clf, 1), batch, repeats, device),
        f'De³ EOT-{eot} PGD step': best_rate(lambda: eot_pgd_step(de3, eot), batch, max(1, repeats // 2), device),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--preset', default='micro'); ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--eot', type=int, default=20); ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--sigma', type=float, default=70.); ap.add_argument('--device', default=None)
    ap.add_argument('--channels', type=int, default=1)
    a = ap.parse_args()
    device = get_device(a.device)
    rates = measure(a.preset, a.batch, a.eot, a.repeats, a.sigma, a.channels, device)
    base = rates['classifier inference']
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f"CPU, {torch.get_num_threads()} threads"
    print(f"De³ cost, preset {a.preset}, batch {a.batch}, σ {a.sigma:g}, {name}, torch {torch.__version__}")
    print(f"{'':28s} {'images/s':>10s} {'× slower than classifier inference':>36s}")
    for k, r in rates.items(): print(f"{k:28s} {r:10.1f} {base / r:36.1f}")
    print(f"ratio De³/classifier inference cost: {base / rates['De³ inference']:.2f}×; "
          f"one EOT-{a.eot} PGD step through De³ costs {base / rates[f'De³ EOT-{a.eot} PGD step']:.0f} classifier inferences")


if __name__ == '__main__':
    main()
