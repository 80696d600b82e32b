// The home page: the workflows the user can see with a form to start a
// run, and the user's runs, paged and updated live from events.

import { api } from './api.js';
import { h, fill, duration, when, eventMs, TERMINAL } from './dom.js';

const PAGE_SIZES = [25, 100, 1000];

/** Workflows as listed: plain tags, or {tag, scope} objects. */
function workflowEntries(data) {
  const list = (data && data.workflows) || [];
  return list.map((w) => (typeof w === 'string' ? { tag: w } : w)).filter((w) => w && w.tag);
}

export class RunsPage {
  constructor(root, { navigate, timings }) {
    Object.assign(this, { root, navigate, timings });
    this.rows = new Map();
    this.pageSize = Number(sessionStorage.getItem('flowcast.pageSize')) || PAGE_SIZES[0];
    this.cursors = [null];
    this.nextCursor = null;
    this.build();
  }

  build() {
    this.formError = h('p', { class: 'error', role: 'alert' });
    this.tagSelect = h('select', { id: 'wf-tag', name: 'tag', required: true });
    this.inputs = h('textarea', {
      id: 'wf-inputs', name: 'inputs', rows: 4, spellcheck: 'false', placeholder: '{"city": "NYC"}',
    }, '{}');
    this.workflowList = h('ul', { class: 'workflows', 'aria-label': 'workflows you can run' });
    const form = h('form', { class: 'start', onsubmit: (e) => { e.preventDefault(); this.start(); } },
      h('label', { for: 'wf-tag' }, 'Workflow'), this.tagSelect,
      h('label', { for: 'wf-inputs' }, 'Inputs (JSON object)'), this.inputs,
      h('button', { type: 'submit', id: 'start-run' }, 'Start run'),
      this.formError);
    this.sizeSelect = h('select', {
      id: 'page-size',
      onchange: () => {
        this.pageSize = Number(this.sizeSelect.value);
        sessionStorage.setItem('flowcast.pageSize', this.pageSize);
        this.cursors = [null];
        this.load();
      },
    }, PAGE_SIZES.map((n) => h('option', { value: n, selected: n === this.pageSize }, n)));
    this.newer = h('button', { type: 'button', id: 'runs-newer', onclick: () => this.page(-1) }, '← Newer');
    this.older = h('button', { type: 'button', id: 'runs-older', onclick: () => this.page(1) }, 'Older →');
    this.listError = h('p', { class: 'error', role: 'alert' });
    this.tbody = h('tbody');
    this.table = h('table', { class: 'runs', id: 'runs' },
      h('caption', { class: 'visually-hidden' }, 'Your runs, newest first'),
      h('thead', {}, h('tr', {}, ['Run', 'Workflow', 'Status', 'Nodes', 'Started', 'Duration']
        .map((t) => h('th', { scope: 'col' }, t)))),
      this.tbody);
    fill(this.root,
      h('section', { class: 'panel', 'aria-labelledby': 'start-h' },
        h('h2', { id: 'start-h' }, 'Start a run'), form, this.workflowList),
      h('section', { class: 'panel', 'aria-labelledby': 'runs-h' },
        h('div', { class: 'bar' },
          h('h2', { id: 'runs-h' }, 'Runs'),
          h('span', { class: 'grow' }),
          h('label', { for: 'page-size' }, 'Per page'), this.sizeSelect,
          this.newer, this.older),
        this.listError, h('div', { class: 'scroll' }, this.table)));
    this.ticker = setInterval(() => this.tick(), 1000);
  }

  destroy() {
    clearInterval(this.ticker);
  }

  async show() {
    await Promise.all([this.loadWorkflows(), this.load()]);
  }

  async loadWorkflows() {
    try {
      const list = workflowEntries(await api('GET', '/api/v1/workflows'));
      const chosen = this.tagSelect.value;
      fill(this.tagSelect, list.map((w) => h('option', { value: w.tag, selected: w.tag === chosen },
        w.scope ? `${w.tag} (${w.scope})` : w.tag)));
      fill(this.workflowList, list.map((w) => h('li', {}, h('code', {}, w.tag),
        w.scope ? h('span', { class: `badge scope-${w.scope}` }, w.scope) : null)));
    } catch (e) {
      this.formError.textContent = `Workflows: ${e.message}`;
    }
  }

  async start() {
    this.formError.textContent = '';
    let inputs;
    try {
      inputs = JSON.parse(this.inputs.value.trim() || '{}');
    } catch (e) {
      this.formError.textContent = `Inputs are not JSON: ${e.message}`;
      this.inputs.focus();
      return;
    }
    if (inputs === null || typeof inputs !== 'object' || Array.isArray(inputs)) {
      this.formError.textContent = 'Inputs must be a JSON object, like {"city": "NYC"}';
      this.inputs.focus();
      return;
    }
    try {
      const r = await api('POST', '/api/v1/runs', { tag: this.tagSelect.value, inputs });
      this.navigate(`#/runs/${encodeURIComponent(r.run_id)}`);
    } catch (e) {
      this.formError.textContent = e.message;
    }
  }

  page(step) {
    if (step > 0 && this.nextCursor) this.cursors.push(this.nextCursor);
    if (step < 0 && this.cursors.length > 1) this.cursors.pop();
    this.load();
  }

  async load() {
    const t0 = performance.now();
    const cursor = this.cursors[this.cursors.length - 1];
    const q = new URLSearchParams({ limit: this.pageSize });
    if (cursor) q.set('cursor', cursor);
    let data;
    try {
      data = await api('GET', `/api/v1/runs?${q}`);
      this.listError.textContent = '';
    } catch (e) {
      this.listError.textContent = `Runs: ${e.message}`;
      return;
    }
    this.nextCursor = data.next_cursor || null;
    this.rows.clear();
    const frag = document.createDocumentFragment();
    for (const r of data.runs || []) frag.append(this.row(r));
    this.tbody.replaceChildren(frag);
    this.newer.disabled = this.cursors.length <= 1;
    this.older.disabled = !this.nextCursor;
    this.timings.runList = { ms: performance.now() - t0, rows: this.rows.size };
  }

  row(r) {
    const run = { ...r };
    const cells = {
      status: h('span', { class: `badge status-${run.status}` }, run.status),
      nodes: h('td', { class: 'num' }),
      duration: h('td', { class: 'num' }),
    };
    const tr = h('tr', { 'data-run': run.run_id },
      h('td', {}, h('a', { href: `#/runs/${encodeURIComponent(run.run_id)}`, title: run.run_id },
        h('code', {}, run.run_id.slice(0, 8)))),
      h('td', {}, run.tag),
      h('td', {}, cells.status),
      cells.nodes,
      h('td', {}, when(run.created_ms)),
      cells.duration);
    const entry = { run, tr, cells };
    this.rows.set(run.run_id, entry);
    this.paint(entry);
    return tr;
  }

  paint({ run, cells }) {
    cells.status.className = `badge status-${run.status}`;
    cells.status.textContent = run.status;
    cells.nodes.textContent = run.nodes ? `${Math.min(run.done || 0, run.nodes)}/${run.nodes}` : '—';
    const end = run.ended_ms || (TERMINAL.has(run.status) ? null : Date.now());
    cells.duration.textContent = run.created_ms && end ? duration(end - run.created_ms) : '—';
  }

  tick() {
    for (const e of this.rows.values()) if (!TERMINAL.has(e.run.status)) this.paint(e);
  }

  /** A live event of the user's. */
  onEvent(ev) {
    let e = this.rows.get(ev.run_id);
    if (!e) {
      // A run started elsewhere (or before it was listed): show it on the
      // first page, newest first.
      if (ev.type !== 'workflow_started' || this.cursors.length > 1) return;
      const tr = this.row({
        run_id: ev.run_id, tag: ev.tag, status: 'running', nodes: ev.nodes, done: 0,
        created_ms: eventMs(ev),
      });
      this.tbody.prepend(tr);
      while (this.rows.size > this.pageSize) {
        const last = this.tbody.lastElementChild;
        this.rows.delete(last.dataset.run);
        last.remove();
      }
      return;
    }
    const { run } = e;
    switch (ev.type) {
      case 'workflow_started':
        run.status = 'running';
        run.nodes = ev.nodes;
        break;
      case 'node_completed':
        run.done = (run.done || 0) + 1;
        break;
      case 'workflow_completed':
      case 'workflow_failed':
      case 'workflow_cancelled':
        run.status = ev.type.slice('workflow_'.length);
        run.ended_ms = eventMs(ev);
        break;
      default:
        return;
    }
    this.paint(e);
  }
}
