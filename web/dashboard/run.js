// A run's page: its DAG with nodes lit by status as events arrive, the
// selected node's details and output, cancel, approve/reject for waiting
// approval nodes, a signal form, and the event log with type filters.
//
// The page loads the run and its stored events over REST, then applies
// live events on top; each event is applied once, by seq, so events that
// arrive while it loads are neither lost nor doubled.

import { api } from './api.js';
import { h, s, fill, duration, when, eventMs, TERMINAL } from './dom.js';
import { drawGraph } from './graph.js';

const EVENT_TYPES = [
  'workflow_started', 'node_started', 'node_progress', 'node_completed', 'node_failed',
  'node_skipped', 'approval_required', 'workflow_completed', 'workflow_failed', 'workflow_cancelled',
];

/** What a node event says about the node's status. */
function nodeStatus(ev) {
  switch (ev.type) {
    case 'node_started': return 'active';
    case 'node_completed': return 'completed';
    case 'node_failed': return ev.will_retry ? 'retrying' : 'failed';
    case 'node_skipped': return 'skipped';
    case 'approval_required': return 'approval';
    default: return null;
  }
}

/** A one-line summary of an event for the log. */
function summary(ev) {
  switch (ev.type) {
    case 'workflow_started': return `${ev.nodes} nodes, ${ev.entry_nodes} entry`;
    case 'node_completed': return `counter ${ev.counter}`;
    case 'node_failed': return `attempt ${ev.attempt}${ev.will_retry ? ' (will retry)' : ''}: ${ev.error}`;
    case 'node_progress': return `${Math.round((ev.progress || 0) * 100)}% ${ev.message || ''}`;
    case 'node_skipped': return ev.reason || '';
    case 'approval_required': return ev.prompt === undefined ? '' : JSON.stringify(ev.prompt);
    case 'workflow_failed': return `${ev.failed_node}: ${ev.error}`;
    case 'workflow_cancelled': return `${(ev.cancelled_nodes || []).length} nodes cancelled`;
    default: return '';
  }
}

export class RunPage {
  constructor(root, runId, { timings }) {
    Object.assign(this, { root, runId, timings });
    this.run = null;
    this.lastSeq = 0;
    this.pending = [];
    this.loaded = false;
    this.nodes = new Map();
    this.approvals = new Map();
    this.selected = null;
    this.startedMs = null;
    this.endedMs = null;
    this.hidden = new Set(JSON.parse(sessionStorage.getItem('flowcast.hiddenTypes') || '[]'));
    this.build();
  }

  build() {
    this.title = h('h2', { id: 'run-h' }, 'Run ', h('code', {}, this.runId));
    this.status = h('span', { class: 'badge', id: 'run-status' }, 'loading');
    this.progress = h('span', { id: 'run-progress' });
    this.elapsed = h('span', { id: 'run-duration' });
    this.cancelBtn = h('button', { type: 'button', id: 'cancel', onclick: () => this.cancel() }, 'Cancel run');
    this.message = h('p', { class: 'error', role: 'alert', id: 'run-message' });
    this.svg = s('svg', { class: 'dag', role: 'group', 'aria-label': 'workflow graph' });
    this.detail = h('div', { id: 'node-detail', 'aria-live': 'polite' },
      h('p', { class: 'muted' }, 'Select a node to see its state and output.'));
    this.approvalBox = h('div', { id: 'approvals' });
    this.signalName = h('input', { id: 'signal-name', name: 'signal', required: true, autocomplete: 'off' });
    this.signalBody = h('textarea', { id: 'signal-body', rows: 3, spellcheck: 'false' }, '{}');
    this.signalMsg = h('p', { class: 'muted', role: 'status' });
    const signalForm = h('form', { class: 'signal', onsubmit: (e) => { e.preventDefault(); this.signal(); } },
      h('label', { for: 'signal-name' }, 'Signal name'), this.signalName,
      h('label', { for: 'signal-body' }, 'Payload (JSON)'), this.signalBody,
      h('button', { type: 'submit' }, 'Send signal'), this.signalMsg);
    this.filters = h('fieldset', { class: 'filters' }, h('legend', {}, 'Show event types'),
      EVENT_TYPES.map((t) => h('label', {},
        h('input', {
          type: 'checkbox', value: t, checked: !this.hidden.has(t),
          onchange: (e) => this.filter(t, e.target.checked),
        }), ` ${t}`)));
    this.log = h('tbody');
    fill(this.root,
      h('p', {}, h('a', { href: '#/' }, '← All runs')),
      h('section', { class: 'panel', 'aria-labelledby': 'run-h' },
        h('div', { class: 'bar' }, this.title, this.status, this.progress, this.elapsed,
          h('span', { class: 'grow' }), this.cancelBtn),
        this.message),
      h('div', { class: 'run-grid' },
        h('div', {},
          h('section', { class: 'panel graph', 'aria-label': 'graph' },
            h('div', { class: 'scroll dag-wrap' }, this.svg)),
          h('section', { class: 'panel', 'aria-labelledby': 'log-h' },
            h('h3', { id: 'log-h' }, 'Events'), this.filters,
            h('div', { class: 'scroll log-wrap' }, h('table', { class: 'log', id: 'event-log' },
              h('thead', {}, h('tr', {}, ['#', 'Time', 'Type', 'Node', 'Details']
                .map((t) => h('th', { scope: 'col' }, t)))),
              this.log)))),
        h('aside', { class: 'panel side' },
          h('h3', {}, 'Node'), this.detail,
          h('h3', {}, 'Approvals'), this.approvalBox,
          h('h3', {}, 'Signal'), signalForm)));
    this.ticker = setInterval(() => this.paintRun(), 1000);
  }

  destroy() {
    clearInterval(this.ticker);
  }

  async show() {
    const t0 = performance.now();
    try {
      const [run, events] = await Promise.all([
        api('GET', `/api/v1/runs/${encodeURIComponent(this.runId)}`),
        api('GET', `/api/v1/runs/${encodeURIComponent(this.runId)}/events`),
      ]);
      this.run = run;
      const nodes = (run.workflow && run.workflow.nodes) || Object.keys(run.nodes || {}).map((id) => ({ id }));
      this.graph = drawGraph(this.svg, nodes, (id) => this.select(id));
      for (const [id, n] of Object.entries(run.nodes || {})) {
        this.nodes.set(id, { ...n });
        this.graph.setStatus(id, n.status);
      }
      this.startedMs = run.created_ms;
      for (const ev of events.events || []) this.apply(ev);
      this.loaded = true;
      for (const ev of this.pending.splice(0)) this.apply(ev);
      this.paintRun();
      this.timings.runPage = { ms: performance.now() - t0, nodes: nodes.length, events: this.lastSeq };
    } catch (e) {
      this.message.textContent = e.status === 404 ? `Run ${this.runId} not found.` : e.message;
      this.status.textContent = 'unknown';
    }
  }

  /** A live event of the user's. */
  onEvent(ev) {
    if (ev.run_id !== this.runId) return;
    if (!this.loaded) this.pending.push(ev);
    else {
      this.apply(ev);
      this.paintRun();
    }
  }

  apply(ev) {
    if (typeof ev.seq === 'number') {
      if (ev.seq <= this.lastSeq) return;
      this.lastSeq = ev.seq;
    }
    this.logRow(ev);
    const t = eventMs(ev);
    switch (ev.type) {
      case 'workflow_started':
        this.run.status = 'running';
        break;
      case 'workflow_completed':
      case 'workflow_failed':
      case 'workflow_cancelled':
        this.run.status = ev.type.slice('workflow_'.length);
        this.endedMs = t;
        for (const id of ev.cancelled_nodes || []) this.setNode(id, { status: 'cancelled' });
        if (ev.failed_node) this.setNode(ev.failed_node, { status: 'failed', error: ev.error });
        this.approvals.clear();
        this.paintApprovals();
        break;
      case 'node_progress':
        this.setNode(ev.node_id, { progress: ev.progress, message: ev.message });
        break;
      default: {
        const status = nodeStatus(ev);
        if (!status || !ev.node_id) break;
        const patch = { status };
        if (ev.attempt !== undefined) patch.attempt = ev.attempt;
        if (ev.result_ref) patch.result_ref = ev.result_ref;
        if (ev.error) patch.error = ev.error;
        this.setNode(ev.node_id, patch);
        if (ev.type === 'approval_required') this.approvals.set(ev.node_id, ev);
        else this.approvals.delete(ev.node_id);
        this.paintApprovals();
      }
    }
  }

  setNode(id, patch) {
    const n = { ...(this.nodes.get(id) || { status: 'waiting' }), ...patch };
    this.nodes.set(id, n);
    if (this.graph) {
      const pct = typeof n.progress === 'number' && n.status === 'active' ? `${Math.round(n.progress * 100)}%` : '';
      this.graph.setStatus(id, n.status, pct);
    }
    if (this.selected === id) this.paintNode();
  }

  paintRun() {
    if (!this.run) return;
    const st = this.run.status;
    this.status.className = `badge status-${st}`;
    this.status.textContent = st;
    const total = this.nodes.size || (this.run.workflow && this.run.workflow.nodes.length) || 0;
    const done = [...this.nodes.values()].filter((n) => n.status === 'completed').length;
    this.progress.textContent = `${done}/${total} nodes`;
    const end = this.endedMs || (TERMINAL.has(st) ? null : Date.now());
    this.elapsed.textContent = this.startedMs && end ? duration(end - this.startedMs) : '';
    this.cancelBtn.disabled = TERMINAL.has(st);
  }

  select(id) {
    this.selected = id;
    this.graph.select(id);
    this.paintNode();
  }

  async paintNode() {
    const id = this.selected;
    const n = this.nodes.get(id) || { status: 'waiting' };
    const output = h('pre', { class: 'output', id: 'node-output' }, n.result_ref ? 'loading…' : '—');
    fill(this.detail,
      h('dl', {},
        h('dt', {}, 'Node'), h('dd', {}, h('code', { id: 'node-id' }, id)),
        h('dt', {}, 'Status'), h('dd', {}, h('span', { class: `badge status-${n.status}` }, n.status)),
        n.attempt ? [h('dt', {}, 'Attempt'), h('dd', {}, n.attempt)] : null,
        typeof n.progress === 'number' ? [h('dt', {}, 'Progress'),
          h('dd', {}, `${Math.round(n.progress * 100)}% ${n.message || ''}`)] : null,
        n.error ? [h('dt', {}, 'Error'), h('dd', { class: 'error' }, n.error)] : null,
        n.result_ref ? [h('dt', {}, 'Result'), h('dd', {}, h('code', { class: 'ref' }, n.result_ref))] : null),
      h('h4', {}, 'Output'), output);
    if (!n.result_ref) return;
    try {
      const value = await api('GET', `/api/v1/results/${encodeURIComponent(n.result_ref)}`);
      if (this.selected === id) output.textContent = JSON.stringify(value, null, 2);
    } catch (e) {
      if (this.selected === id) output.textContent = `could not load the output: ${e.message}`;
    }
  }

  paintApprovals() {
    if (!this.approvals.size) {
      fill(this.approvalBox, h('p', { class: 'muted' }, 'No node is waiting for a decision.'));
      return;
    }
    fill(this.approvalBox, [...this.approvals.values()].map((ev) => {
      const comment = h('input', { id: `comment-${ev.node_id}`, autocomplete: 'off' });
      const msg = h('p', { class: 'muted', role: 'status' });
      const decide = async (what) => {
        try {
          await api('POST', `/api/v1/runs/${encodeURIComponent(this.runId)}/nodes/${encodeURIComponent(ev.node_id)}/${what}`,
            comment.value ? { comment: comment.value } : {});
          msg.textContent = `${what === 'approve' ? 'Approved' : 'Rejected'}; waiting for the run to go on.`;
        } catch (e) {
          msg.textContent = e.message;
        }
      };
      return h('div', { class: 'approval', 'data-node': ev.node_id },
        h('p', {}, h('code', {}, ev.node_id), ev.prompt === undefined ? '' : `: ${typeof ev.prompt === 'string' ? ev.prompt : JSON.stringify(ev.prompt)}`),
        ev.expires_at ? h('p', { class: 'muted' }, `expires ${when(ev.expires_at > 1e12 ? ev.expires_at : ev.expires_at * 1000)}`) : null,
        h('label', { for: `comment-${ev.node_id}` }, 'Comment'), comment,
        h('div', { class: 'buttons' },
          h('button', { type: 'button', class: 'approve', onclick: () => decide('approve') }, 'Approve'),
          h('button', { type: 'button', class: 'reject', onclick: () => decide('reject') }, 'Reject')),
        msg);
    }));
  }

  async cancel() {
    this.message.textContent = '';
    try {
      const r = await api('POST', `/api/v1/runs/${encodeURIComponent(this.runId)}/cancel`);
      this.message.textContent = r.status === 'cancelling' ? 'Cancelling…' : '';
    } catch (e) {
      this.message.textContent = e.message;
    }
  }

  async signal() {
    let payload;
    try {
      payload = JSON.parse(this.signalBody.value.trim() || 'null');
    } catch (e) {
      this.signalMsg.textContent = `Payload is not JSON: ${e.message}`;
      return;
    }
    const name = this.signalName.value.trim();
    try {
      await api('POST', `/api/v1/runs/${encodeURIComponent(this.runId)}/signals/${encodeURIComponent(name)}`, payload);
      this.signalMsg.textContent = `Signal ${name} sent.`;
    } catch (e) {
      this.signalMsg.textContent = e.message;
    }
  }

  logRow(ev) {
    const tr = h('tr', { 'data-type': ev.type, hidden: this.hidden.has(ev.type) },
      h('td', { class: 'num' }, ev.seq ?? ''),
      h('td', {}, new Date(eventMs(ev) || Date.now()).toLocaleTimeString()),
      h('td', {}, h('span', { class: `type type-${ev.type}` }, ev.type)),
      h('td', {}, ev.node_id ? h('code', {}, ev.node_id) : ''),
      h('td', {}, summary(ev)));
    this.log.append(tr);
  }

  filter(type, shown) {
    if (shown) this.hidden.delete(type);
    else this.hidden.add(type);
    sessionStorage.setItem('flowcast.hiddenTypes', JSON.stringify([...this.hidden]));
    for (const tr of this.log.querySelectorAll(`tr[data-type="${CSS.escape(type)}"]`)) tr.hidden = !shown;
  }
}
