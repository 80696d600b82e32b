// The run's DAG as SVG, laid out in layers: a node's layer is the length
// of the longest path to it from an entry node (entries are layer 0), so
// every edge points right. Within a layer, nodes are ordered by the mean
// position of their parents (one barycenter pass), which keeps most edges
// short and uncrossed without a layout library.

import { s } from './dom.js';

const NODE_W = 150;
const NODE_H = 32;
const GAP_X = 56;
const GAP_Y = 14;
const PAD = 16;
const LABEL_CHARS = 18;

/** Longest-path layers: an array of arrays of node ids. */
export function layers(nodes) {
  const parents = new Map(nodes.map((n) => [n.id, n.depends_on || []]));
  const children = new Map(nodes.map((n) => [n.id, []]));
  const waiting = new Map();
  for (const n of nodes) {
    const ps = (n.depends_on || []).filter((p) => children.has(p));
    waiting.set(n.id, ps.length);
    for (const p of ps) children.get(p).push(n.id);
  }
  const layer = new Map();
  const queue = nodes.filter((n) => waiting.get(n.id) === 0).map((n) => n.id);
  for (let i = 0; i < queue.length; i++) {
    const id = queue[i];
    const ps = parents.get(id).filter((p) => layer.has(p));
    layer.set(id, ps.length ? Math.max(...ps.map((p) => layer.get(p))) + 1 : 0);
    for (const c of children.get(id)) {
      waiting.set(c, waiting.get(c) - 1);
      if (waiting.get(c) === 0) queue.push(c);
    }
  }
  // A cycle cannot be registered; should one appear, its nodes still show.
  for (const n of nodes) if (!layer.has(n.id)) layer.set(n.id, 0);
  const out = [];
  for (const n of nodes) {
    const l = layer.get(n.id);
    while (out.length <= l) out.push([]);
    out[l].push(n.id);
  }
  // Barycenter ordering, layer by layer.
  const pos = new Map();
  out.forEach((ids, l) => {
    if (l > 0) {
      const key = new Map(ids.map((id, i) => {
        const ps = parents.get(id).filter((p) => pos.has(p));
        return [id, ps.length ? ps.reduce((a, p) => a + pos.get(p), 0) / ps.length : i];
      }));
      ids.sort((a, b) => key.get(a) - key.get(b));
    }
    ids.forEach((id, i) => pos.set(id, i));
  });
  return out;
}

function label(id) {
  return id.length > LABEL_CHARS ? `${id.slice(0, LABEL_CHARS - 1)}…` : id;
}

/**
 * Draws `nodes` ([{id, kind, depends_on}]) into `svg`; `onSelect(id)` is
 * called when a node is clicked or activated with Enter/Space. Returns
 * {setStatus(id, status, detail), select(id)}.
 */
export function drawGraph(svg, nodes, onSelect) {
  const ls = layers(nodes);
  const xy = new Map();
  ls.forEach((ids, l) => ids.forEach((id, i) => xy.set(id, {
    x: PAD + l * (NODE_W + GAP_X),
    y: PAD + i * (NODE_H + GAP_Y),
  })));
  const height = PAD * 2 + Math.max(...ls.map((ids) => ids.length)) * (NODE_H + GAP_Y) - GAP_Y;
  const width = PAD * 2 + ls.length * (NODE_W + GAP_X) - GAP_X;
  svg.replaceChildren();
  svg.setAttribute('width', width);
  svg.setAttribute('height', height);
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  const edges = s('g', { class: 'edges' });
  const boxes = s('g', { class: 'nodes' });
  for (const n of nodes) {
    const to = xy.get(n.id);
    for (const p of n.depends_on || []) {
      const from = xy.get(p);
      if (!from) continue;
      const x1 = from.x + NODE_W;
      const y1 = from.y + NODE_H / 2;
      const x2 = to.x;
      const y2 = to.y + NODE_H / 2;
      const dx = (x2 - x1) / 2;
      edges.append(s('path', {
        d: `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`,
        'data-from': p,
        'data-to': n.id,
      }));
    }
  }
  const els = new Map();
  for (const n of nodes) {
    const { x, y } = xy.get(n.id);
    const activate = () => onSelect(n.id);
    const g = s('g', {
      class: 'node',
      transform: `translate(${x},${y})`,
      tabindex: 0,
      role: 'button',
      'data-node': n.id,
      'data-status': 'waiting',
      'aria-label': `node ${n.id}: waiting`,
      onclick: activate,
      onkeydown: (e) => {
        if (e.key === 'Enter' || e.key === ' ') {
          e.preventDefault();
          activate();
        }
      },
    },
    s('title', {}, `${n.id} (${n.kind || 'node'})`),
    s('rect', { width: NODE_W, height: NODE_H, rx: 6 }),
    s('text', { x: 10, y: NODE_H / 2 + 4 }, label(n.id)));
    els.set(n.id, g);
    boxes.append(g);
  }
  svg.append(
    s('defs', {}, s('marker', {
      id: 'arrow', viewBox: '0 0 8 8', refX: 8, refY: 4, markerWidth: 6, markerHeight: 6, orient: 'auto',
    }, s('path', { d: 'M0,0 L8,4 L0,8 z' }))),
    edges,
    boxes,
  );
  let selected = null;
  return {
    setStatus(id, status, detail) {
      const g = els.get(id);
      if (!g) return;
      g.dataset.status = status;
      g.setAttribute('aria-label', `node ${id}: ${status}${detail ? `, ${detail}` : ''}`);
    },
    select(id) {
      if (selected) selected.classList.remove('selected');
      selected = els.get(id) || null;
      if (selected) selected.classList.add('selected');
    },
  };
}
