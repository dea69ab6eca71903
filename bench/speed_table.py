"""Render the README's speed table from bench/results/*.json (between the speed-table markers in README.md).

    python bench/speed_table.py [--results bench/results] [--readme README.md] [--check]

Every row names what was measured, the peer it is compared with, the device and the date, from the results files the
bench scripts write with `--save` and `bench/gpu_check.py` writes on a GPU. Tiny-mode (smoke test) files are skipped.
`--check` exits 1 when README.md is not up to date with the results (nothing is written).
"""
import argparse, json, sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / 'tools'))
from readme_section import update_section

START, END = '<!-- speed-table:start -->', '<!-- speed-table:end -->'


def fmt(v):
    if v is None: return '–'
    if isinstance(v, float): return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def load(results):
    "Results files (newest date last), without tiny-mode ones."
    out = []
    for p in sorted(Path(results).glob('*.json')):
        try: d = json.loads(p.read_text())
        except json.JSONDecodeError as e: raise SystemExit(f"speed_table: {p} is not valid JSON ({e})")
        if d.get('tiny') or not d.get('rows'): continue
        out.append((p, d))
    return sorted(out, key=lambda pd: (pd[1].get('device', '') != 'cpu', pd[1].get('device', ''), pd[0].name))


def table(results) -> str:
    files = load(results)
    if not files: return '_No benchmark results yet: run the bench scripts with `--save`, or `make gpu-check` on a GPU._\n'
    L = ['| benchmark | peer | ours | peer’s | unit | ratio | target | met | device | date |',
         '|---|---|---:|---:|---|---:|---|:-:|---|---|']
    for p, d in files:
        dev = d.get('device_name', d.get('device', '?'))
        if d.get('device') == 'cpu': dev = f"**CPU** — {dev}"
        for r in d['rows']:
            met = {True: '✓', False: '✗'}.get(r.get('ok'), '')
            note = f" ({r['note']})" if r.get('note') else ''
            L.append(f"| {r['what']}{note} | {r['peer']} | {fmt(r['ours'])} | {fmt(r['theirs'])} | {r['unit']} | "
                     f"{fmt(r['ratio'])} | {r.get('target', '')} | {met} | {dev} | {d.get('date', '?')[:10]} |")
    L.append('')
    L.append('Ratios: peer time / our time (> 1: ours is faster), except where the row says it is a cost ratio. '
             'Sources: ' + ', '.join(f"`bench/results/{p.name}` (`{d.get('command', '?')}`, commit {d.get('commit', '?')}, "
                                     f"load {d.get('load')})" for p, d in files) + '.')
    return '\n'.join(L) + '\n'


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--results', default=str(HERE / 'results')); ap.add_argument('--readme', default=str(HERE.parent / 'README.md'))
    ap.add_argument('--check', action='store_true', help='exit 1 if README.md is out of date')
    a = ap.parse_args(argv)
    return update_section(a.readme, START, END, table(a.results), 'speed table', 'python bench/speed_table.py', a.check,
                          who='speed_table')


if __name__ == '__main__':
    sys.exit(main())
