"""Attack throughput: mimbench's PGD-10 (ℓ∞) and APGD-CE-100 vs torchattacks on the same ViT, batch and threads.

    python bench/attacks.py [--preset tiny] [--batch 64] [--img 32] [--patch 4] [--threads N] [--fast]

Model: `create_vit(preset, patch_size, img_size)` with random weights in eval mode (speed does not depend on training).
Prints images/s of each attack for both libraries, the ratio ours/torchattacks (> 1: ours is faster) and each attack's
cost in units of one clean forward pass of the batch (PGD-10 needs 10 forward+input-backward passes, so ≈ 30 is the
floor). `--fast` adds mimbench's opt-in bf16-autocast + torch.compile path, which only does something on CUDA.
"""
import argparse, time
import torch
import torchattacks
from mimbench.models import create_vit
from mimbench.attacks import pgd, apgd_ce


def timeit(f, reps):
    f()                                          # warm-up (and compilation, with --fast on CUDA)
    if torch.cuda.is_available(): torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps): f()
    if torch.cuda.is_available(): torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--preset', default='tiny'); ap.add_argument('--batch', type=int, default=64)
    ap.add_argument('--img', type=int, default=32); ap.add_argument('--patch', type=int, default=4)
    ap.add_argument('--threads', type=int, default=None); ap.add_argument('--reps', type=int, default=2)
    ap.add_argument('--fast', action='store_true')
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    torch.manual_seed(0)
    model = create_vit(a.preset, img_size=a.img, patch_size=a.patch, in_chans=3).to(dev).eval()
    x = torch.rand(a.batch, 3, a.img, a.img, device=dev)
    with torch.no_grad(): y = model(x).argmax(1)      # every point starts correctly classified, so no attack skips any
    eps = 8 / 255
    with torch.no_grad(): t_fwd = timeit(lambda: model(x), 5)
    print(f"{a.preset} ViT, patch {a.patch}, {a.img}×{a.img}, batch {a.batch}, {dev}, {torch.get_num_threads()} threads")
    print(f"clean forward: {a.batch / t_fwd:.1f} img/s")
    rows = [('PGD-10 ℓ∞', lambda: pgd(model, x, y, eps, alpha=2/255, steps=10),
             lambda: torchattacks.PGD(model, eps=eps, alpha=2/255, steps=10)(x, y), 1),
            ('APGD-CE-100', lambda: apgd_ce(model, x, y, eps, steps=100),
             lambda: torchattacks.APGD(model, eps=eps, steps=100, loss='ce', n_restarts=1)(x, y), 1)]
    if a.fast:
        rows += [('PGD-10 ℓ∞ fast', lambda: pgd(model, x, y, eps, alpha=2/255, steps=10, fast=True),
                  lambda: torchattacks.PGD(model, eps=eps, alpha=2/255, steps=10)(x, y), 1)]
    print(f"{'attack':<16}{'ours img/s':>12}{'torchattacks':>14}{'ratio':>8}{'ours cost':>11}{'their cost':>12}  (cost: clean forwards)")
    for name, ours, theirs, reps in rows:
        t_o, t_t = timeit(ours, reps), timeit(theirs, reps)
        print(f"{name:<16}{a.batch / t_o:>12.1f}{a.batch / t_t:>14.1f}{t_t / t_o:>8.2f}{t_o / t_fwd:>11.1f}{t_t / t_fwd:>12.1f}")


if __name__ == '__main__':
    main()
