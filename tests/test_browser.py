"""In a real browser: JupyterLab on a free local port (with a token) + headless Chromium driven by Playwright.
Runs a small widgets notebook, moves the De³ σ slider and checks that the pictures changed; screenshots go to
test-output/browser/ (or $MIMBENCH_TEST_OUTPUT/browser). `tests/browser_deps.sh` installs Chromium and Playwright;
where they are missing the test is skipped with the reason."""
import json, os, re, secrets, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get('MIMBENCH_CHROMIUM') or shutil.which('chromium') or '/usr/bin/chromium'
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync']
OUT = Path(os.environ.get('MIMBENCH_TEST_OUTPUT', ROOT / 'test-output')) / 'browser'
KERNEL_TIMEOUT_S = 600     # the first cell trains the demo models when their cache is cold (~1 min on one core)

CELLS = [
    "import warnings; warnings.simplefilter('ignore')\n"
    "from mimbench.widgets import De3Explorer, ReconstructionExplorer, AttackExplorer, demo_de3\n"
    "defense, test_ds, sweep = demo_de3()",
    "de3 = De3Explorer(defense, test_ds, sweep=sweep, index=3, sigma=20)\nde3",
    "rec = ReconstructionExplorer(defense.denoiser, test_ds, pretext='nim', index=3)\nrec",
    "att = AttackExplorer(defense.classifier, test_ds, index=3)\natt",
]

def _notebook(path):
    nb = {'cells': [{'cell_type': 'code', 'metadata': {}, 'execution_count': None, 'outputs': [], 'source': c} for c in CELLS],
          'metadata': {'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'}},
          'nbformat': 4, 'nbformat_minor': 5}
    path.write_text(json.dumps(nb))

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _requirements():
    "The reason the browser test cannot run here, or None."
    try: import playwright.sync_api  # noqa: F401
    except ImportError: return "playwright is not installed (run tests/browser_deps.sh)"
    if not Path(CHROMIUM).exists(): return f"no Chromium at {CHROMIUM} (run tests/browser_deps.sh: apt-get install chromium)"
    try: import jupyterlab  # noqa: F401
    except ImportError: return "jupyterlab is not installed"
    return None

@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    "A JupyterLab server in a temp dir holding the widgets notebook: yields (base url, token)."
    why = _requirements()
    if why: pytest.skip(why)
    d = tmp_path_factory.mktemp('lab')
    _notebook(d / 'widgets_demo.ipynb')
    settings = d / 'settings' / '@jupyterlab' / 'apputils-extension'
    settings.mkdir(parents=True)
    (settings / 'notification.jupyterlab-settings').write_text(json.dumps({'fetchNews': 'false', 'checkForUpdates': False}))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, 'JUPYTER_CONFIG_DIR': str(d / 'config'), 'JUPYTER_RUNTIME_DIR': str(d / 'runtime'),
           'JUPYTER_DATA_DIR': str(d / 'data'), 'IPYTHONDIR': str(d / 'ipython'), 'OMP_NUM_THREADS': '1',
           'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep),
           'PATH': os.pathsep.join([str(Path(sys.executable).parent), os.environ.get('PATH', '')])}
    log = open(d / 'lab.log', 'w')
    proc = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', f'--port={port}', '--ServerApp.port_retries=0',
                             '--ServerApp.ip=127.0.0.1', f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={d}',
                             '--expose-app-in-browser', f'--LabApp.user_settings_dir={d / "settings"}',
                             f'--LabApp.workspaces_dir={d / "workspaces"}'] + (['--allow-root'] if os.geteuid() == 0 else []),
                            cwd=d, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None: pytest.fail(f"JupyterLab exited early:\n{(d / 'lab.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2): break
            except OSError: time.sleep(0.5)
        else: pytest.fail(f"JupyterLab did not answer on {url}:\n{(d / 'lab.log').read_text()[-3000:]}")
        yield url, token, d / 'lab.log'
    finally:
        proc.terminate()
        try: proc.wait(20)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()
        log.close()

# Run every cell only once the kernel is connected and idle: run-all on a notebook whose kernel has not attached yet
# opens JupyterLab's "Select Kernel" dialog and runs nothing (a slow kernel start on a busy CI machine did that).
RUN_ALL = """async () => {
  const app = window.jupyterapp;
  const nb = app.shell.currentWidget;
  await nb.context.ready; await nb.sessionContext.ready;
  const t0 = Date.now();
  for (;;) {
    const k = nb.sessionContext.session && nb.sessionContext.session.kernel;
    if (k && k.connectionStatus === 'connected' && k.status === 'idle') break;
    if (Date.now() - t0 > 240000) throw new Error('kernel not connected and idle after 240 s: ' + (k ? k.connectionStatus + '/' + k.status : 'no kernel'));
    await new Promise(r => setTimeout(r, 250));
  }
  await app.commands.execute('notebook:run-all-cells');
  return nb.sessionContext.session.kernel.name;
}"""

# What the notebook is doing: kernel status, a modal dialog if one is open, and each cell's execution count and outputs.
STATE = """() => {
  const nb = window.jupyterapp.shell.currentWidget;
  const k = nb.sessionContext.session && nb.sessionContext.session.kernel;
  const dialog = document.querySelector('.jp-Dialog');
  const cells = [], m = nb.content.model;
  for (let i = 0; i < m.cells.length; i++) {
    const c = m.cells.get(i), outputs = [];
    for (let j = 0; j < c.outputs.length; j++) outputs.push(c.outputs.get(j).toJSON());
    cells.push({count: c.executionCount, outputs: outputs});
  }
  return {kernel: k ? k.connectionStatus + '/' + k.status : 'no kernel', dialog: dialog ? dialog.innerText : null, cells: cells};
}"""

def _diagnosis(state, log):
    "A failure message that says what the notebook was doing: kernel, dialog, each cell's outputs, the server log's tail."
    lines = [f"kernel: {state['kernel']}"] + ([f"dialog open: {state['dialog']!r}"] if state['dialog'] else [])
    for i, c in enumerate(state['cells']):
        lines.append(f"cell {i} (execution count {c['count']}):")
        for o in c['outputs']:
            if o.get('output_type') == 'error': lines.append(f"  error {o.get('ename')}: {o.get('evalue')}\n" + re.sub(r'\x1b\[[0-9;]*m', '', '\n'.join(o.get('traceback', [])))[-3000:])
            else: lines.append(f"  {o.get('output_type')}: {str(o.get('text') or o.get('data', ''))[:300]}")
    return '\n'.join(lines + ['lab.log (tail):', log.read_text()[-3000:]])

def _broken(state):
    "Why waiting longer cannot help: a cell raised, a modal dialog blocks the notebook, or the kernel died; else None."
    if any(o.get('output_type') == 'error' for c in state['cells'] for o in c['outputs']): return 'a cell raised'
    if state['dialog']: return 'a dialog blocks the notebook'
    if state['kernel'].endswith('/dead'): return 'the kernel died'
    return None

def _wait_for(page, condition, timeout_s, log, what):
    "Poll `condition` (JS) until true; fail at once, with a diagnosis, when the notebook is broken, or after `timeout_s`."
    end = time.monotonic() + timeout_s
    while not page.evaluate(condition):
        state = page.evaluate(STATE)
        why = _broken(state) or (f"no {what} after {timeout_s:.0f} s" if time.monotonic() > end else None)
        if why:
            page.screenshot(path=str(OUT / 'lab-failure.png'), full_page=True)
            pytest.fail(f"{why} (waiting for {what}; screenshot in {OUT / 'lab-failure.png'})\n{_diagnosis(state, log)}")
        time.sleep(1)

def test_broken_notebook_is_diagnosed():
    "The waiting loop's stop rule: a raised cell, an open dialog or a dead kernel stop it; a busy kernel does not."
    busy = {'kernel': 'connected/busy', 'dialog': None, 'cells': [{'count': 1, 'outputs': [{'output_type': 'stream', 'text': 'training'}]}]}
    assert _broken(busy) is None
    assert _broken({**busy, 'kernel': 'connected/dead'}) == 'the kernel died'
    assert _broken({**busy, 'dialog': 'Select Kernel'}) == 'a dialog blocks the notebook'
    err = {**busy, 'cells': [{'count': 1, 'outputs': [{'output_type': 'error', 'ename': 'ImportError', 'evalue': 'no widgets', 'traceback': ['tb']}]}]}
    assert _broken(err) == 'a cell raised'
    log = OUT / 'fake-lab.log'; OUT.mkdir(parents=True, exist_ok=True); log.write_text('server said hello')
    msg = _diagnosis(err, log)
    assert 'ImportError: no widgets' in msg and 'server said hello' in msg

def test_de3_sigma_slider_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright
    url, token, log = lab
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={'width': 1400, 'height': 1000})
            page.set_default_timeout(120_000)
            page.goto(f"{url}/lab/tree/widgets_demo.ipynb?token={token}")
            page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget "
                                   "&& window.jupyterapp.shell.currentWidget.sessionContext")
            page.evaluate(RUN_ALL)
            # all three explorers rendered with pictures
            for cls, img in [('de3explorer', 'mimbench-denoised'), ('reconstructionexplorer', None), ('attackexplorer', None)]:
                sel = f".mimbench-{cls} img" + (f".{img}" if img else '')
                _wait_for(page, f"() => {{ const i = document.querySelector('{sel}'); return !!(i && i.src && i.naturalWidth > 0); }}",
                          KERNEL_TIMEOUT_S, log, f"picture in the {cls}")
            de3 = page.locator('.mimbench-de3explorer')
            den, sweep = page.locator('img.mimbench-denoised'), page.locator('img.mimbench-sweep')
            page.wait_for_function("() => { const i = document.querySelector('img.mimbench-sweep'); return i && i.naturalWidth > 0; }")
            assert 'Error displaying widget' not in page.content()
            de3.scroll_into_view_if_needed()
            page.screenshot(path=str(OUT / 'lab-before.png'), full_page=True)
            de3.screenshot(path=str(OUT / 'de3-sigma20.png'))
            before = {'den': den.screenshot(), 'sweep': sweep.screenshot(), 'src': den.get_attribute('src')}

            # drag the σ handle to the right, as a user would
            handle = page.locator('.mimbench-sigma .noUi-handle')
            box = handle.bounding_box()
            x, y = box['x'] + box['width'] / 2, box['y'] + box['height'] / 2
            page.mouse.move(x, y); page.mouse.down(); page.mouse.move(x + 160, y, steps=12); page.mouse.up()
            readout = page.locator('.mimbench-sigma .widget-readout')
            page.wait_for_function("() => parseFloat(document.querySelector('.mimbench-sigma .widget-readout').textContent) > 60")
            sigma = float(readout.text_content())
            time.sleep(1.5)            # let the debounced update land
            page.wait_for_function("(old) => document.querySelector('img.mimbench-denoised').src !== old", arg=before['src'])
            after = {'den': den.screenshot(), 'sweep': sweep.screenshot()}
            assert after['den'] != before['den'], "the denoised picture did not change after moving σ"
            assert after['sweep'] != before['sweep'], "the σ marker on the sweep plot did not move"
            de3.screenshot(path=str(OUT / f'de3-sigma{sigma:g}.png'))

            # slider-to-picture latency in the browser: type a value into the readout, time until the new image shows
            lat = []
            for v in (100, 140, 40):
                src = den.get_attribute('src')
                readout.click(); page.keyboard.press('Control+A'); page.keyboard.type(str(v))
                t0 = time.perf_counter(); page.keyboard.press('Enter')
                page.wait_for_function("(old) => { const i = document.querySelector('img.mimbench-denoised'); "
                                       "return i.src !== old && i.complete && i.naturalWidth > 0; }", arg=src, timeout=30_000)
                lat.append(time.perf_counter() - t0)
            (OUT / 'latency.json').write_text(json.dumps({'browser_slider_to_picture_s': lat}))
            print(f"browser round trip (readout edit → new picture): {[round(1000 * l) for l in lat]} ms")
            # attack the current image at the current σ (PGD-10, EOT 4, in a worker thread)
            page.get_by_role('button', name='attack at this σ').click()
            page.wait_for_function("() => { const i = document.querySelector('img.mimbench-adversarial'); "
                                   "return i && i.offsetParent !== null && i.naturalWidth > 0; }", timeout=120_000)
            de3.screenshot(path=str(OUT / 'de3-attack.png'))
            status = page.locator('.mimbench-de3explorer').inner_text()
            assert 'Error' not in status, status
            page.screenshot(path=str(OUT / 'lab-after.png'), full_page=True)
            page.locator('.mimbench-reconstructionexplorer').screenshot(path=str(OUT / 'reconstruction.png'))
            page.locator('.mimbench-attackexplorer').screenshot(path=str(OUT / 'attack.png'))
        finally:
            browser.close()
