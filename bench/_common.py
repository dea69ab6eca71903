"""What every bench script shares: timing, the provenance of a result and the results files under bench/results/.

A results file is `bench/results/<bench>-<device>.json`: the provenance (device slug and name, torch version, UTC date,
git commit, load average, threads, command) and `rows`, one per comparison with a peer library. `bench/speed_table.py`
renders the README's speed table from these rows, so a row must say what was measured, against which peer, on which
device and when.
"""
import datetime, importlib.util, json, os, platform, re, subprocess, sys, time
from pathlib import Path
import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / 'results'

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s; the first name contained in
# `torch.cuda.get_device_name()` wins, so the more specific names come first.
PEAK_BF16_TFLOPS = [('H100 PCIe', 756.), ('H100 NVL', 835.), ('GH200', 989.), ('H200', 989.), ('H100', 989.),
                    ('H800', 989.), ('B200', 2250.), ('A100', 312.), ('A800', 312.), ('L40S', 362.), ('L40', 181.),
                    ('L4', 121.), ('A10G', 70.), ('A10', 125.), ('RTX 4090', 165.), ('RTX 6000 Ada', 364.)]


def peak_bf16_tflops(name:str):
    "The card's peak dense bf16 TFLOP/s by device name, or None ('unknown') for a card not in the table."
    for k, v in PEAK_BF16_TFLOPS:
        if k.lower() in name.lower(): return v
    return None


def device_name(dev) -> str:
    dev = torch.device(dev)
    if dev.type == 'cuda': return torch.cuda.get_device_name(dev)
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def device_slug(dev) -> str:
    "File-name form of the device: 'cpu', or the GPU's name ('nvidia-h200')."
    dev = torch.device(dev)
    if dev.type != 'cuda': return dev.type
    return re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name(dev).lower()).strip('-')


def git_commit() -> str:
    "The commit the code was measured at ('+dirty' when mimbench/ or bench/ differ from it); $MIMBENCH_COMMIT where no .git travels."
    if os.environ.get('MIMBENCH_COMMIT'): return os.environ['MIMBENCH_COMMIT']
    try:
        root = HERE.parent
        c = subprocess.run(['git', 'rev-parse', '--short=10', 'HEAD'], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        d = subprocess.run(['git', 'status', '--porcelain', '--', 'mimbench', 'bench'], cwd=root, capture_output=True, text=True, timeout=10).stdout
        return (c or 'unknown') + ('+dirty' if d.strip() else '')
    except Exception: return 'unknown'


def load_average():
    try: return [round(v, 2) for v in os.getloadavg()]
    except OSError: return None


def provenance(dev) -> dict:
    return {'device': device_slug(dev), 'device_name': device_name(dev), 'torch': torch.__version__,
            'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'), 'commit': git_commit(),
            'load': load_average(), 'threads': torch.get_num_threads(),
            'command': ' '.join([Path(sys.argv[0]).name and f"bench/{Path(sys.argv[0]).name}"] + sys.argv[1:])}


def sync(dev):
    if torch.device(dev).type == 'cuda': torch.cuda.synchronize()


def cpu_time():
    "Process CPU time (all threads): on a shared CPU it does not count the time other processes hold the cores."
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timeit(f, reps:int=1, dev='cpu', warmup:int=1):
    "Mean seconds per call of `f` after `warmup` calls: wall time on CUDA (synchronised), process CPU time on CPU."
    clock = time.perf_counter if torch.device(dev).type == 'cuda' else cpu_time
    for _ in range(warmup): f()
    sync(dev); t = clock()
    for _ in range(reps): f()
    sync(dev)
    return (clock() - t) / reps


def model_pass(model, x, grad:bool):
    """A callable doing one pass of `model` over the batch `x`: a no-grad forward, or (`grad`) a forward and the
    input-gradient backward an attack step needs. The unit of model work that the floors and budgets are priced in."""
    def forward():
        with torch.no_grad(): model(x)
    def forward_backward():
        xa = x.clone().requires_grad_(True)
        torch.autograd.grad(model(xa).float().logsumexp(1).sum(), xa)
    return forward_backward if grad else forward


def row(what:str, peer:str, ours:float, theirs:float|None, unit:str, ratio:float|None=None, target:str='', ok=None, note:str=''):
    "One comparison. `ratio` > 1 means ours is better (faster) unless the note says otherwise."
    return {'what': what, 'peer': peer, 'ours': ours, 'theirs': theirs, 'unit': unit, 'ratio': ratio, 'target': target,
            'ok': ok, 'note': note}


def write_results(bench:str, rows:list, dev, extra:dict|None=None, out=None) -> Path:
    "Write `<out>/<bench>-<device>.json` (default out: bench/results/) and return its path."
    out = Path(out or RESULTS); out.mkdir(parents=True, exist_ok=True)
    path = out / f"{bench}-{device_slug(dev)}.json"
    data = {'bench': bench, **provenance(dev), 'rows': rows, **(extra or {})}
    path.write_text(json.dumps(data, indent=1, default=str) + '\n')
    return path


def load_bench(name:str):
    "Import bench/<name>.py as module `bench_<name>` (bench/cka.py must not shadow pytorch-cka's `import cka`)."
    spec = importlib.util.spec_from_file_location(f'bench_{name}', HERE / f'{name}.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def have(dist:str) -> bool:
    "Whether the distribution `dist` is installed (the peers are `make bench`'s extras, absent from a plain `make install`)."
    from importlib.metadata import version, PackageNotFoundError
    try: version(dist); return True
    except PackageNotFoundError: return False


def peer_version(dist:str) -> str:
    from importlib.metadata import version, PackageNotFoundError
    try: return f"{dist} {version(dist)}"
    except PackageNotFoundError: return dist
