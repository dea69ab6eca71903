"""AdPE training-step cost relative to its base (MAE+ with the same position embedding) in one run.

    python bench/adpe.py [--preset micro] [--batch 128] [--steps 10] [--img 32] [--patch 4] [--crops 4] [--amp]

Every model: the same encoder/decoder sizes, MAE+ crops (4 half-size crops, all tokens through the encoder), mask 75 %,
AdamW, one process. The parallel-mode AdPE adds one leaf copy of the adversary and a projected ascent step in the same
backward, so it should cost almost nothing: target ≤ 1.15× for the embedding variants. Timings interleave the models
(rounds of a few steps each, median over rounds) so that a shared or throttling machine affects all of them alike.
Also reports plain MAE vs MAE+ (APE) for reference. Prints ms/step and the ratio AdPE / base.

Results: `--save` writes bench/results/adpe-<device>.json, from which the README's speed table is generated
(bench/speed_table.py); no numbers are kept here.
"""
import argparse, statistics, time
import torch
from mimbench.adpe import AdPEPretext
from mimbench.mim import PRETEXTS
from _common import device_name, load_average, row, write_results

CASES = [('mae', 'mae', {}), ('mae-plus (ape)', 'mae-plus', {}), ('adpe-ape-emb', 'adpe-ape-emb', {}),
         ('adpe-ape-coord', 'adpe-ape-coord', {}), ('mae-plus (rpe)', 'mae-plus', {'pe': 'rpe'}),
         ('adpe-rpe-emb', 'adpe-rpe-emb', {}), ('adpe-rpe-coord', 'adpe-rpe-coord', {})]
BASE = {'adpe-ape-emb': 'mae-plus (ape)', 'adpe-ape-coord': 'mae-plus (ape)', 'adpe-rpe-emb': 'mae-plus (rpe)',
        'adpe-rpe-coord': 'mae-plus (rpe)', 'mae-plus (ape)': 'mae'}

def build_steps(cases, preset, batch, img, patch, crops, chans, amp, dev):
    "One training step per case (name → callable), each model built, optimised and warmed up as the trainer would."
    torch.manual_seed(0)
    x = torch.rand(batch, chans, img, img, device=dev)
    out = {}
    for name, recipe, kw in [c for c in CASES if cases is None or c[0] in cases]:
        if issubclass(PRETEXTS[recipe], AdPEPretext): kw = {'crops': crops, **kw}
        p = PRETEXTS[recipe](**kw)
        m = p.create_model(preset, img, patch, chans).to(dev).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        def step(p=p, m=m, opt=opt):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp and dev.type == 'cuda'):
                loss = p.loss(m, x)['loss']
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        for _ in range(3): step()                                 # warm-up
        out[name] = step
    return out


def measure(preset='micro', batch=128, steps=10, rounds=5, img=32, patch=4, crops=4, chans=1, amp=False, device=None, cases=None):
    "Median ms/step of every case (interleaved rounds) and the ratio of each to its base: dict."
    dev = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    runs = {k: (f, []) for k, f in build_steps(cases, preset, batch, img, patch, crops, chans, amp, dev).items()}
    for _ in range(rounds):
        for name, (step, times) in runs.items():
            if dev.type == 'cuda': torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(steps): step()
            if dev.type == 'cuda': torch.cuda.synchronize()
            times.append((time.perf_counter() - t) / steps * 1e3)
    ms = {k: statistics.median(v[1]) for k, v in runs.items()}
    return {'ms_per_step': ms, 'ratio': {k: ms[k] / ms[BASE[k]] for k in ms if k in BASE and BASE[k] in ms},
            'base': {k: BASE[k] for k in ms if k in BASE}, 'preset': preset, 'batch': batch, 'img': img, 'patch': patch,
            'crops': crops, 'amp': amp and dev.type == 'cuda'}


def profile(preset='micro', batch=128, img=32, patch=4, crops=4, chans=1, amp=False, device=None, cases=('mae-plus (rpe)', 'adpe-rpe-coord'),
            steps=3, top=15) -> dict:
    "torch.profiler tables (top operators by device time on CUDA, CPU time otherwise) of `steps` training steps per case."
    from torch.profiler import ProfilerActivity, profile as prof
    dev = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == 'cuda' else [])
    sort = 'self_cuda_time_total' if dev.type == 'cuda' else 'self_cpu_time_total'
    out = {}
    for name, step in build_steps(cases, preset, batch, img, patch, crops, chans, amp, dev).items():
        with prof(activities=acts) as pr:
            for _ in range(steps): step()
            if dev.type == 'cuda': torch.cuda.synchronize()
        out[name] = pr.key_averages().table(sort_by=sort, row_limit=top)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--preset', default='micro'); ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--steps', type=int, default=10); ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--img', type=int, default=32); ap.add_argument('--patch', type=int, default=4)
    ap.add_argument('--crops', type=int, default=4); ap.add_argument('--chans', type=int, default=1)
    ap.add_argument('--amp', action='store_true', help='bf16 autocast (CUDA), as the trainer does')
    ap.add_argument('--device', default=None)
    ap.add_argument('--save', action='store_true', help='write bench/results/adpe-<device>.json for the speed table')
    ap.add_argument('--profile', nargs='*', default=None, metavar='CASE',
                    help="instead of timing: torch.profiler's top operators per case (default: mae-plus (rpe), adpe-rpe-coord)")
    a = ap.parse_args()
    dev = torch.device(a.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if a.profile is not None:
        for k, t in profile(a.preset, a.batch, a.img, a.patch, a.crops, a.chans, a.amp, dev, a.profile or ('mae-plus (rpe)', 'adpe-rpe-coord')).items():
            print(f"== {k}\n{t}")
        return
    r = measure(a.preset, a.batch, a.steps, a.rounds, a.img, a.patch, a.crops, a.chans, a.amp, dev)
    ms = r['ms_per_step']
    print(f"device {dev} ({device_name(dev)}), load {load_average()}, "
          f"preset {a.preset}, batch {a.batch}, img {a.img}, patch {a.patch}, crops {a.crops}, amp {a.amp}, "
          f"{a.rounds}×{a.steps} steps")
    for k, v in ms.items():
        ratio = f"  ×{r['ratio'][k]:.3f} vs {BASE[k]}" if k in r['ratio'] else ''
        print(f"  {k:<16} {v:8.2f} ms/step{ratio}")
    if a.save:
        rows = [row(f"{k} training step ({a.preset}, batch {a.batch}, {a.crops} crops)", f"mimbench {BASE[k]}", ms[k], ms[BASE[k]],
                    'ms/step', r['ratio'][k], '≤ 1.15× base (cost ratio)', r['ratio'][k] <= 1.15, 'ratio = cost / base cost (< 1 is cheaper)')
                for k in r['ratio'] if k.startswith('adpe')]
        print('wrote', write_results('adpe', rows, dev))

if __name__ == '__main__': main()
