"""MAE training steps/s: mimbench's MAE vs lightly's MAE (pip `lightly`) at the same ViT, batch, mask ratio and threads.

    python bench/mae_step.py [--preset tiny] [--batch 128] [--steps 10] [--img 32] [--patch 4]

Both models: timm `Block`s, same encoder/decoder sizes, norm-pix MSE on the masked patches, AdamW, one process.
Prints steps/s of each and the ratio ours/lightly (> 1 means ours is faster). On CUDA it also reports images/s
and the fraction of the GPU's peak bf16 FLOP/s (the card's peak from bench/_common.py's table, or --peak-tflops).
`--save` writes bench/results/mae_step-<device>.json for the README's speed table.
"""
import argparse, time
import torch
from torch import nn
from mimbench.models import PRESETS, create_mae
from _common import device_name, load_average, peak_bf16_tflops, peer_version, row, write_results


def lightly_mae(s, img, patch, chans):
    "lightly's MAE, assembled as in its documentation example (encoder: timm ViT; decoder: MAEDecoderTIMM)."
    from timm.models.vision_transformer import VisionTransformer
    from lightly.models import utils
    from lightly.models.modules import MAEDecoderTIMM, MaskedVisionTransformerTIMM

    class LightlyMAE(nn.Module):
        def __init__(self):
            super().__init__()
            vit = VisionTransformer(img_size=img, patch_size=patch, in_chans=chans, num_classes=0, embed_dim=s.embed_dim,
                                    depth=s.depth, num_heads=s.num_heads, mlp_ratio=s.mlp_ratio)
            self.patch_size, self.mask_ratio = patch, 0.75
            self.backbone = MaskedVisionTransformerTIMM(vit=vit)
            self.sequence_length = self.backbone.sequence_length
            self.decoder = MAEDecoderTIMM(num_patches=vit.patch_embed.num_patches, patch_size=patch, in_chans=chans,
                                          embed_dim=s.embed_dim, decoder_embed_dim=s.decoder_embed_dim,
                                          decoder_depth=s.decoder_depth, decoder_num_heads=s.decoder_num_heads,
                                          mlp_ratio=s.mlp_ratio)

        def forward(self, images):
            b = images.shape[0]
            idx_keep, idx_mask = utils.random_token_mask(size=(b, self.sequence_length), mask_ratio=self.mask_ratio,
                                                         device=images.device)
            x_enc = self.backbone.encode(images=images, idx_keep=idx_keep)
            x_dec = self.decoder.embed(x_enc)
            x_masked = utils.repeat_token(self.decoder.mask_token, (b, self.sequence_length))
            x_masked = utils.set_at_index(x_masked, idx_keep, x_dec.type_as(x_masked))
            x_pred = self.decoder.predict(utils.get_at_index(self.decoder.decode(x_masked), idx_mask))
            target = utils.get_at_index(utils.patchify(images, self.patch_size), idx_mask - 1)
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            return ((x_pred - (target - mean) / (var + 1e-6) ** .5) ** 2).mean()

    return LightlyMAE()


def steps_per_s(model, loss_fn, x, steps, device):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    def step():
        loss = loss_fn(model, x); opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    for _ in range(2): step()                                   # warm-up
    if device.type == 'cuda': torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps): step()
    if device.type == 'cuda': torch.cuda.synchronize()
    return steps / (time.perf_counter() - t)


def mae_flops_per_image(preset, img, patch, mask_ratio=0.75):
    "Matmul FLOPs of one MAE training step per image (forward + backward ≈ 3 × forward; encoder on the kept tokens)."
    s = PRESETS[preset]
    L, D = (img // patch) ** 2, s.embed_dim
    keep = int(L * (1 - mask_ratio)) + 1
    enc = s.depth * (24 * keep * D * D + 4 * keep * keep * D)
    dd = s.decoder_embed_dim
    dec = s.decoder_depth * (24 * (L + 1) * dd * dd + 4 * (L + 1) ** 2 * dd)
    return 3 * (enc + dec)


def measure(preset='tiny', batch=128, steps=10, img=32, patch=4, chans=3, rounds=3, device=None, peer=True):
    "Best-of-`rounds` steps/s of mimbench's MAE (and lightly's, with `peer`), bf16 autocast on CUDA as in the trainer."
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    torch.manual_seed(0)
    s = PRESETS[preset]
    models = {'mimbench': create_mae(preset, img, patch, chans).to(device).train()}
    if peer: models['lightly'] = lightly_mae(s, img, patch, chans).to(device).train()
    x = torch.rand(batch, chans, img, img, device=device)
    amp = torch.autocast('cuda', dtype=torch.bfloat16, enabled=device.type == 'cuda')
    def ours_loss(m, x):
        with amp: return m(x, mask_ratio=0.75)[0]
    def theirs_loss(m, x):
        with amp: return m(x)
    best = {k: 0. for k in models}
    for _ in range(rounds):                                    # interleaved rounds, best of each
        for k, m in models.items():
            best[k] = max(best[k], steps_per_s(m, ours_loss if k == 'mimbench' else theirs_loss, x, steps, device))
    out = {'preset': preset, 'img': img, 'patch': patch, 'batch': batch, 'amp_bf16': device.type == 'cuda',
           'params': {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()},
           'steps_per_s': best, 'img_per_s': {k: v * batch for k, v in best.items()}}
    if peer: out['ratio'] = best['mimbench'] / best['lightly']
    flops = mae_flops_per_image(preset, img, patch) * batch
    out['tflops'] = flops * best['mimbench'] / 1e12
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--preset', default='tiny'); ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--steps', type=int, default=10); ap.add_argument('--img', type=int, default=32)
    ap.add_argument('--patch', type=int, default=4); ap.add_argument('--chans', type=int, default=3)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--peak-tflops', type=float, default=None, help="the card's peak bf16 TFLOP/s (default: from the table in bench/_common.py)")
    ap.add_argument('--save', action='store_true', help='write bench/results/mae_step-<device>.json for the speed table')
    a = ap.parse_args()
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    r = measure(a.preset, a.batch, a.steps, a.img, a.patch, a.chans, a.rounds, device)
    best = r['steps_per_s']
    print(f"device {device} ({device_name(device)}), load {load_average()}, "
          f"preset {a.preset}, {a.img}px, patch {a.patch}, batch {a.batch}, mask 0.75")
    print(f"params: mimbench {r['params']['mimbench']:,}  lightly {r['params']['lightly']:,}")
    for k, v in best.items(): print(f"{k:>9}: {v:7.2f} steps/s  {v * a.batch:8.1f} img/s")
    print(f"ratio mimbench/lightly: {r['ratio']:.2f}x")
    if device.type == 'cuda':
        peak = a.peak_tflops or peak_bf16_tflops(torch.cuda.get_device_name())
        print(f"≈{r['tflops']:.1f} TFLOP/s = " + (f"{r['tflops'] / peak:.1%} of {peak:g} TFLOP/s peak bf16" if peak else
                                                 "unknown fraction of peak (card not in bench/_common.py's table)"))
    if a.save:
        what = f"MAE training step ({a.preset} ViT, {a.img}px, patch {a.patch}, batch {a.batch})"
        print('wrote', write_results('mae_step', [row(what, peer_version('lightly'), r['img_per_s']['mimbench'],
                                                       r['img_per_s']['lightly'], 'img/s', r['ratio'], '≥ 1.0', r['ratio'] >= 1.0)], device))


if __name__ == '__main__':
    main()
