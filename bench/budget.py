"""What a scale costs on this machine: seconds per training step of each kind of stage, and the cost of AutoAttack.

`mimbench reproduce P --scale S` and `mimbench leaderboard --run --scale S` train and evaluate many models. Before a
long sitting, measure here what one step of each stage costs at that scale (the scale's model, patch, batch and image
shape from `mimbench.leaderboard.SCALES`), and what AutoAttack standard costs per image: the forwards per image of each
AutoAttack stage come from the committed profile `bench/results/attacks-cpu.json` (they depend on the data and ε, not
on the machine), times this machine's measured cost of one no-grad forward and one forward + backward of the model.

    python bench/budget.py --scale small --threads 2

Prints per-epoch minutes for MAE / MIMIR pretraining and CE / PGD-10 fine-tuning, and AutoAttack seconds per image
and per evaluation of n images. These are estimates from measured step times, labelled as such; the real time of a
run is in its `metrics.jsonl` and a record's `seconds`.
"""
import argparse, json, time
from pathlib import Path
import torch
from _common import model_pass

HERE = Path(__file__).parent

def median_seconds(fn, reps:int) -> float:
    "Median wall time of `fn()` over `reps` calls, after one warm-up call."
    fn(); ts = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]

def step_seconds(cfg, x, y, reps:int) -> float:
    "Seconds of one optimiser step of the run `cfg` would train (its model and objective, this batch)."
    from mimbench.train import build_run
    model, obj = build_run(cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    def step():
        out = obj.loss(model, x, y); opt.zero_grad(); out['loss'].backward(); opt.step()
    return median_seconds(step, reps)

def forward_seconds(model, x, reps:int) -> tuple:
    "(no-grad forward, forward + input-gradient backward) seconds per image."
    model.eval()
    return tuple(median_seconds(model_pass(model, x, grad), reps) / len(x) for grad in (False, True))

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--scale', default='small', help='a mimbench.leaderboard.SCALES name (micro, small, paper)')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--reps', type=int, default=5, help='timed steps per stage (median)')
    ap.add_argument('--n', type=int, default=1000, help='evaluation images for the AutoAttack estimate')
    a = ap.parse_args(argv)
    from mimbench.leaderboard import SCALES
    from mimbench.train import TrainConfig
    from mimbench.models import create_vit
    torch.set_num_threads(a.threads)
    s = SCALES[a.scale]
    c, side, bs = s.data['channels'], s.data['img_size'], s.pretrain['batch_size']
    x, y = torch.rand(bs, c, side, side), torch.randint(0, 10, (bs,))
    base = dict(channels=c, img_size=side, batch_size=bs, **s.model)
    stages = [('pretrain mae', TrainConfig(task='pretrain', recipe='mae', **base)),
              ('pretrain mimir (adversarial + HSIC)', TrainConfig(task='pretrain', recipe='mimir', recipe_args={'mi_weight': 1e-5}, **base)),
              ('fine-tune ce', TrainConfig(task='finetune', recipe='ce', **base)),
              ('fine-tune pgd-at (PGD-10)', TrainConfig(task='finetune', recipe='pgd-at', recipe_args={'steps': 10, 'alpha': '2/255'}, **base))]
    n_train = s.data.get('n_train') or 60000
    per_epoch = max(1, n_train // bs)
    print(f"scale {a.scale}: {s.model['preset']} ViT, patch {s.model['patch_size']}, {c}×{side}², batch {bs}, "
          f"{per_epoch} steps per epoch, {a.threads} threads (estimates from measured step times)")
    for name, cfg in stages:
        t = step_seconds(cfg, x, y, a.reps)
        print(f"  {name:<38} {t:6.2f} s/step  {t * per_epoch / 60:7.1f} min/epoch")
    fwd, grad = forward_seconds(create_vit(s.model['preset'], side, s.model['patch_size'], c, 10), x, a.reps)
    prof = json.loads((HERE / 'results' / 'attacks-cpu.json').read_text())['autoattack']
    stages = prof['autoattack ours']['by_stage']
    per_image = sum(st['images_no_grad'] * fwd + st['images_grad'] * grad for st in stages.values()) / prof['n']
    print(f"  forward {1e3 * fwd:.2f} ms/image, forward + backward {1e3 * grad:.2f} ms/image")
    print(f"  AutoAttack standard ≈ {per_image:.1f} s/image → {per_image * a.n / 3600:.2f} h for n = {a.n} "
          f"(forwards per image from bench/results/attacks-cpu.json: n = {prof['n']}, ε = {prof['eps']:.4f}, "
          f"clean {prof['clean_acc']:.3f}; fewer robust points cost less)")

if __name__ == '__main__': main()
