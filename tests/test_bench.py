"The prepared GPU check runs in its tiny mode on CPU (so it cannot rot between GPU runs), and the speed table renders."
import importlib.util, json, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

def _load(name):   # by path: bench/ on sys.path would let bench/cka.py shadow pytorch-cka's `import cka`
    spec = importlib.util.spec_from_file_location(f'bench_{name}', ROOT / 'bench' / f'{name}.py')
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); return m

speed_table, common = _load('speed_table'), _load('_common')
peak_bf16_tflops, row = common.peak_bf16_tflops, common.row

ROW_KEYS = {'what', 'peer', 'ours', 'theirs', 'unit', 'ratio', 'target', 'ok', 'note'}
SECTIONS = {'mae', 'widgets', 'de3', 'adpe', 'fast_attack', 'cka', 'autoattack'}


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('gpu-check')
    p = subprocess.run([sys.executable, str(ROOT / 'bench' / 'gpu_check.py'), '--tiny', '--out', str(out), '--clf-dir', str(out / 'clf')],
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    return p, out


def test_gpu_check_tiny_runs_every_section(tiny_run):
    p, out = tiny_run
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads((out / 'gpu-cpu.json').read_text())
    assert {'device', 'device_name', 'torch', 'date', 'commit', 'load', 'sections', 'rows', 'total_s'} <= set(res)
    assert res['device'] == 'cpu' and res['tiny'] is True and res['commit'] != 'unknown'
    assert set(res['sections']) == SECTIONS and not any('error' in s or 'skipped' in s for s in res['sections'].values())
    assert res['rows'] and all(ROW_KEYS <= set(r) for r in res['rows'])
    s = res['sections']
    assert s['mae']['img_per_s']['mimbench'] > 0 and s['mae']['fraction_of_peak'] == 'unknown'   # no peak for a CPU
    assert set(s['widgets']['median_ms']) == {'de3 sigma change', 'reconstruction redraw', 'attack step (render)',
                                              'attack re-run (PGD-10, ε change)'}
    assert all(v > 0 for v in s['widgets']['median_ms'].values())
    split = s['widgets']['re_run_split_ms']                  # where an attack re-run goes: the plot is part of the attack
    assert set(split) == {'attack', 'loss plot', 'render'} and 0 < split['loss plot'] < split['attack']
    for k in ('apgd-ce ours', 'apgd-ce torchattacks', 'autoattack ours', 'autoattack torchattacks'):
        a = s['autoattack'][k]
        assert 0 <= a['robust_acc'] <= 1 and a['time'] > 0 and a['max_linf'] <= s['autoattack']['eps'] + 1e-6
    assert {'apgd-ce', 'apgd-t', 'fab-t', 'square'} & set(s['autoattack']['autoattack ours']['by_stage'])
    assert any(r['method'] == 'mimbench' and r['max_dev'] < 1e-6 for r in s['cka']['results'])
    assert all(k.startswith('adpe') for k in s['adpe']['ratio'] if k != 'mae-plus (ape)')
    assert (out / 'gpu-cpu.md').read_text().startswith('# GPU check')
    assert 'partial' not in res and 'partial' not in (out / 'gpu-cpu.md').read_text().splitlines()[0]
    assert not list(out.glob('*.tmp'))          # the atomic writes left no temp file behind
    # tiny results never reach the README's table
    assert speed_table.load(out) == []


def test_gpu_check_refuses_full_run_without_cuda():
    import torch
    if torch.cuda.is_available(): pytest.skip('a CUDA device is present')
    p = subprocess.run([sys.executable, str(ROOT / 'bench' / 'gpu_check.py')], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and '--tiny' in p.stderr


def test_peak_table():
    assert peak_bf16_tflops('NVIDIA H200') == 989. and peak_bf16_tflops('NVIDIA H100 PCIe') == 756.
    assert peak_bf16_tflops('NVIDIA A100-SXM4-80GB') == 312. and peak_bf16_tflops('NVIDIA L40S') == 362.
    assert peak_bf16_tflops('Some Future GPU') is None


def test_speed_table_renders_between_markers(tmp_path):
    res = tmp_path / 'results'; res.mkdir()
    (res / 'attacks-cpu.json').write_text(json.dumps({'device': 'cpu', 'device_name': 'CPU (2 cores)', 'date': '2026-11-29 12:00 UTC',
        'commit': 'abc', 'command': 'bench/attacks.py --save', 'load': [1.0, 1.0, 1.0],
        'rows': [row('AutoAttack standard', 'torchattacks 3.5.1', 10., 13., 's', 1.3, '≥ 1.2', True)]}))
    (res / 'gpu-cpu.json').write_text(json.dumps({'device': 'cpu', 'tiny': True, 'rows': [row('x', 'y', 1., 1., 's')]}))
    readme = tmp_path / 'README.md'
    readme.write_text(f"# t\n\n## Speed\n{speed_table.START}\nold\n{speed_table.END}\n\n## After\n")
    assert speed_table.main(['--results', str(res), '--readme', str(readme), '--check']) == 1
    assert speed_table.main(['--results', str(res), '--readme', str(readme)]) == 0
    text = readme.read_text()
    assert 'old' not in text and '## After' in text and text.count(speed_table.START) == 1
    line = next(l for l in text.splitlines() if l.startswith('| AutoAttack'))
    assert 'torchattacks 3.5.1' in line and '**CPU**' in line and '2026-11-29' in line and '✓' in line
    assert '| x |' not in text                                            # the tiny-mode file is skipped
    assert speed_table.main(['--results', str(res), '--readme', str(readme), '--check']) == 0


def test_readme_speed_table_is_up_to_date():
    assert speed_table.main(['--check']) == 0, "run `python bench/speed_table.py` after saving bench results"


def test_budget_estimates_every_stage_and_autoattack(capsys, monkeypatch):
    "bench/budget.py measures a step of each stage kind at a scale and prices AutoAttack from the committed profile."
    monkeypatch.syspath_prepend(str(ROOT / 'bench'))       # bench/budget.py imports its sibling _common
    budget = _load('budget')
    budget.main(['--scale', 'micro', '--threads', '1', '--reps', '1', '--n', '16'])
    out = capsys.readouterr().out
    for stage in ('pretrain mae', 'pretrain mimir', 'fine-tune ce', 'fine-tune pgd-at'): assert stage in out, out
    per_image = float(out.split('AutoAttack standard ≈ ')[1].split(' s/image')[0])
    assert per_image > 0, out
    t_fwd = budget.median_seconds(lambda: sum(range(10000)), 3)
    assert 0 < t_fwd < 1

def test_readme_section_without_markers_says_what_to_add(tmp_path):
    "Both README generators share tools/readme_section.py: no markers is a clear error, and nothing is written."
    readme = tmp_path / 'README.md'; readme.write_text("# t\n")
    with pytest.raises(SystemExit, match='no <!-- speed-table:start -->'):
        speed_table.main(['--results', str(tmp_path), '--readme', str(readme)])
    assert readme.read_text() == "# t\n"

def test_aa_stages_times_every_autoattack_stage(tiny_run, capsys):
    "bench/aa_stages.py prints the wall seconds of each AutoAttack stage on a trained run (issue 16: where the time goes)."
    clf = next((tiny_run[1] / 'clf').rglob('model.safetensors'))
    _load('aa_stages').main([str(clf.parent), '--n', '4'])
    out = capsys.readouterr().out
    assert 'n = 4' in out and 'robust' in out, out
    shares = [float(l.split()[-2]) for l in out.splitlines()[1:]]
    assert [l.split()[0] for l in out.splitlines()[1:]] == ['apgd-ce', 'apgd-t', 'fab-t', 'square'], out
    assert abs(sum(shares) - 100) < 0.5, out


def test_forward_floor_charges_gradients_and_skips_empty_stages(monkeypatch):
    "The AutoAttack floor: images with autograd cost more than images without; a stage with no forwards costs nothing."
    import torch
    monkeypatch.syspath_prepend(str(ROOT / 'bench'))       # bench/attacks.py imports its sibling _common
    from mimbench.models import create_vit
    attacks = _load('attacks')
    torch.manual_seed(0)
    m = create_vit('micro', img_size=16, patch_size=8, in_chans=1)
    by_stage = {'no grad': {'forwards': 4, 'images_grad': 0, 'images_no_grad': 256},
                'grad': {'forwards': 4, 'images_grad': 256, 'images_no_grad': 0},
                'idle': {'forwards': 0, 'images_grad': 0, 'images_no_grad': 0}}
    f = attacks.forward_floor(m, by_stage, (1, 16, 16), min_seconds=0.2)
    assert set(f['by_stage']) == {'no grad', 'grad'} and f['by_stage']['grad'] > 1.3 * f['by_stage']['no grad'] > 0
    assert abs(f['seconds'] - sum(f['by_stage'].values())) < 1e-12
    res = {'autoattack ours': {'time': 2 * f['seconds'], 'by_stage': by_stage},
           'autoattack torchattacks': {'time': 3 * f['seconds'], 'by_stage': by_stage}}
    attacks.add_floor(res, m, (1, 16, 16))
    assert 1.5 < res['autoattack ours']['over_floor'] < 2.5 and 2.0 < res['max_ratio'] < 4.5


def test_gpu_check_marks_a_run_cut_short(tmp_path, tiny_run):
    "The file written after each section says 'partial' until the last one is done (a run killed at its limit keeps it)."
    _, out = tiny_run
    res = json.loads((out / 'gpu-cpu.json').read_text())
    gc = _load('gpu_check')
    sys.path[:] = [q for q in sys.path if Path(q).resolve() != ROOT / 'bench']   # its import put bench/ on the path
    stem = gc.write({**res, 'partial': True}, tmp_path, 'cpu')
    assert json.loads(stem.with_suffix('.json').read_text())['partial'] is True
    assert 'partial' in stem.with_suffix('.md').read_text().splitlines()[0]


def test_cka_rows_use_a_column_the_rows_have():
    "On CUDA the ratios use wall time: the returned column must exist in every row (a KeyError on the H200 run, 07fa804)."
    cka = _load('cka')
    sys.path[:] = [q for q in sys.path if Path(q).resolve() != ROOT / 'bench']
    for device, col in (('cuda', 'wall_s'), ('cpu', 'cpu_s')):
        one = lambda t, c: {'device': device, 'time': t, 'cpu_s': c, 'peak_mb': 10., 'base_mb': 5., 'cka': [[1.0]]}
        res = {('forward', 'cross'): one(1., 4.), ('mimbench', 'cross'): one(2., 6.), ('pytorch-cka', 'cross'): one(4., 18.),
               ('reference', 'cross'): one(8., 8.)}
        rows, key = cka.summarize(res, ['cross'])
        by = {r['method']: r for r in rows}
        assert key == col and all(key in r for r in rows)
        want = (2., 2.) if device == 'cuda' else (1.5, 3.)       # mimbench / forward, pytorch-cka / mimbench
        assert (by['mimbench']['per_forward'], by['pytorch-cka']['vs_ours']) == want


def test_gpu_check_merge_reruns_one_section(tmp_path, tiny_run):
    "`--merge` re-measures the named section and keeps the others, each marked with the run that measured it."
    _, out = tiny_run
    prev = json.loads((out / 'gpu-cpu.json').read_text())
    p = subprocess.run([sys.executable, str(ROOT / 'bench' / 'gpu_check.py'), '--tiny', '--only', 'de3', '--out', str(tmp_path),
                        '--merge', str(out / 'gpu-cpu.json')], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((tmp_path / 'gpu-cpu.json').read_text())
    assert set(res['sections']) == SECTIONS and 'from' not in res['sections']['de3']
    assert all(res['sections'][k]['from']['date'] == prev['date'] for k in SECTIONS - {'de3'})
    assert res['rows'] == prev['rows']                         # de3 has no rows: every row is the earlier run's
    assert 'kept from an earlier run' in (tmp_path / 'gpu-cpu.md').read_text()
    bad = dict(prev, sizes={'other': 1}); (tmp_path / 'bad.json').write_text(json.dumps(bad))
    p = subprocess.run([sys.executable, str(ROOT / 'bench' / 'gpu_check.py'), '--tiny', '--only', 'de3', '--out', str(tmp_path / 'x'),
                        '--merge', str(tmp_path / 'bad.json')], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode != 0 and 'sizes' in p.stderr and not (tmp_path / 'x').exists()


def test_workers_bench_compares_the_same_work(tmp_path):
    "bench/workers.py at micro: both ways make the same records (their flags compared), the ratio is one wall over the other."
    wb = _load('workers')
    m = wb.main(['--out', str(tmp_path)])
    assert (m['runs'], m['records']) == (4, 2) and m['speedup'] == pytest.approx(m['one_process_s'] / m['workers_s'])
    assert 0.9 <= m['flag_agreement'] <= 1
    assert not list(tmp_path.iterdir())                           # no --save: nothing written
    import numpy as np
    a = {('p', 'm', 0, 'clean'): np.array([1, 0, 1, 1], bool)}
    assert wb.flag_agreement(a, {('p', 'm', 0, 'clean'): np.array([1, 1, 1, 1], bool)}) == 0.75
    with pytest.raises(ValueError, match='different records'): wb.flag_agreement(a, {})
