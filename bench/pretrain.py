"""Cost of one MIMIR pretraining epoch relative to one MAE epoch, same data, same model, same process.

    python bench/pretrain.py [--n 2048] [--batch 256] [--preset micro] [--patch 4] [--channels 1] [--recipes mae,mimir,adv-mae]

MIMIR's efficiency table (Table 12) reports MIMIR ≈ 1.02–1.36× MAE per epoch on GPUs. Each recipe trains a fresh
model (same seed) for one epoch over the same Fashion-MNIST images with AdamW, through the recipe's own `loss`
(mask draw, 1-step PGD on the visible patches, HSIC(latent, x_adv)), after one warm-up step. The ratio printed is
epoch time / MAE epoch time; the issue's target for MIMIR is ≤ 2.2× on CPU (one extra forward/backward for the attack
and an N×N HSIC). Pass --device cuda for a GPU (bf16 autocast as in the trainer).
"""
import argparse, time
import torch
from mimbench.data import get_dataset, subset, load_batch
from mimbench.mim import PRETEXTS
import mimbench.adversarial  # noqa: F401  (registers the recipes)


def epoch_seconds(recipe, x_all, args, device):
    torch.manual_seed(0)
    pt = PRETEXTS[recipe]()
    model = pt.create_model(args.preset, args.img, args.patch, args.channels).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = device.type == 'cuda'
    batches = x_all.split(args.batch)
    def step(x):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = pt.loss(model, x)['loss']
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    step(batches[0])                                             # warm-up
    if amp: torch.cuda.synchronize()
    t = time.perf_counter()
    for x in batches: step(x)
    if amp: torch.cuda.synchronize()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=2048); ap.add_argument('--batch', type=int, default=256)
    ap.add_argument('--preset', default='micro'); ap.add_argument('--patch', type=int, default=4)
    ap.add_argument('--img', type=int, default=32); ap.add_argument('--channels', type=int, default=1)
    ap.add_argument('--recipes', default='mae,mimir,adv-mae'); ap.add_argument('--repeats', type=int, default=2)
    ap.add_argument('--device', default=None)
    args = ap.parse_args()
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    ds = subset(get_dataset('fashion-mnist', 'train', channels=args.channels, img_size=args.img), args.n)
    x_all = load_batch(ds, torch.arange(len(ds)))[0].to(device)
    recipes = [r.strip() for r in args.recipes.split(',')]
    if recipes[0] != 'mae': recipes = ['mae'] + [r for r in recipes if r != 'mae']
    print(f"{args.preset} ViT, patch {args.patch}, {len(x_all)} images of {args.channels}×{args.img}², batch {args.batch}, "
          f"{device}, torch threads {torch.get_num_threads()}; best of {args.repeats} epochs")
    times = {}
    for _ in range(args.repeats):                                # interleaved repeats: fair under a shared machine
        for r in recipes: times[r] = min(times.get(r, float('inf')), epoch_seconds(r, x_all, args, device))
    for r in recipes:
        print(f"  {r:<10} {times[r]:7.2f} s/epoch   {times[r] / times['mae']:.2f}× MAE")
    print(f"MIMIR / MAE epoch-time ratio: {times.get('mimir', float('nan')) / times['mae']:.2f} (target ≤ 2.2 on CPU)")


if __name__ == '__main__':
    main()
