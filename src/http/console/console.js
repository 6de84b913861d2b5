// Quarry console: a page over Quarry's own HTTP API, with the same keys and scopes as any
// client. Nothing here is fetched from anywhere but the server that served it (the server's
// Content-Security-Policy says so too). The key lives in this script's memory only: never in
// a URL, a cookie or the browser's web storage; a reload forgets it.
//
// Every piece of server data reaches the page as text nodes (`el` never parses HTML), so a
// document's text or a hostile metadata value cannot inject markup.
'use strict';

(() => {
  const state = {
    key: '', // the API key, in memory only
    who: null, // WhoAmI: { name, role, collections, all_collections }
    collection: '', // the collection the pages share
    watches: new Map(), // job id -> AbortController of its live watch
    page: null, // AbortController of the current page's requests
  };

  // ---- DOM helpers --------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else if (k === 'text') node.textContent = v;
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    append(node, children);
    return node;
  }
  function append(node, children) {
    for (const c of children.flat(Infinity)) {
      if (c === undefined || c === null || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  const SVG = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    for (const c of children.flat(Infinity)) {
      if (c !== undefined && c !== null) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  let idCount = 0;
  const uid = (p) => `${p}-${++idCount}`;
  // A labelled form field: returns [wrapper, control].
  function field(label, control, grow) {
    if (!control.id) control.id = uid('f');
    return el('div', { class: grow ? 'field grow' : 'field' }, el('label', { for: control.id, text: label }), control);
  }
  function select(name, options, value) {
    return el('select', { name }, options.map(([v, t]) => el('option', { value: v, selected: v === value, text: t })));
  }
  function toast(message) {
    const t = document.getElementById('toast');
    t.textContent = message;
    t.classList.add('show');
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => t.classList.remove('show'), 4000);
  }
  function errorBox(e) {
    return el('div', { class: 'error', role: 'alert' }, e instanceof ApiError ? `${e.code}: ${e.message}` : String(e));
  }
  const fmt = (x, digits = 4) => (typeof x === 'number' ? x.toFixed(digits) : String(x ?? ''));
  const when = (ms) => (ms ? new Date(Number(ms)).toLocaleString() : '');
  const short = (s) => String(s ?? '').replace(/^(SEARCH_MODE|JOB_STATE|METADATA_TYPE|SOURCE_FORMAT)_/, '').toLowerCase();

  // ---- the API ---------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, body) {
      super(body && body.message ? body.message : `HTTP ${status}`);
      this.status = status;
      this.code = (body && body.code) || `HTTP_${status}`;
    }
  }
  function headers(json) {
    const h = { Accept: 'application/json' };
    if (state.key) h.Authorization = `Bearer ${state.key}`;
    if (json) h['Content-Type'] = 'application/json';
    return h;
  }
  async function api(method, path, body, signal) {
    const res = await fetch(path, {
      method,
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      credentials: 'omit',
      cache: 'no-store',
    });
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : {}; } catch { data = { message: text.slice(0, 300) }; }
    if (!res.ok) throw new ApiError(res.status, data);
    return data;
  }
  // Server-sent events from a fetch (EventSource cannot send the key in a header): calls
  // `onEvent(name, data)` for each event; an `error` event throws its body as an ApiError.
  async function events(method, path, body, signal, onEvent) {
    const res = await fetch(path, {
      method,
      headers: { ...headers(body !== undefined), Accept: 'text/event-stream' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      credentials: 'omit',
      cache: 'no-store',
    });
    if (!res.ok) {
      let data = null;
      try { data = await res.json(); } catch { /* not JSON */ }
      throw new ApiError(res.status, data);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let name = 'message';
        const data = [];
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) name = line.slice(6).trim();
          else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
        }
        if (!data.length) continue;
        const parsed = JSON.parse(data.join('\n'));
        if (name === 'error') throw new ApiError(0, parsed);
        onEvent(name, parsed);
      }
    }
  }
  const enc = encodeURIComponent;
  const canWrite = () => state.who && (state.who.role === 'ROLE_WRITE' || state.who.role === 'ROLE_ADMIN');
  const canAdmin = () => state.who && state.who.role === 'ROLE_ADMIN';

  // ---- the key -----------------------------------------------------------------------------
  async function identify() {
    const who = document.getElementById('who');
    try {
      state.who = await api('GET', '/v1/whoami');
      const scope = state.who.all_collections ? 'all collections' : `collections: ${state.who.collections.join(', ') || 'none'}`;
      who.textContent = `${state.who.name || 'anonymous'} · ${short(state.who.role).replace('role_', '')} · ${scope}`;
    } catch (e) {
      state.who = null;
      who.textContent = e instanceof ApiError && e.status === 401 ? 'a key is needed' : `not signed in (${e.message})`;
    }
  }

  // ---- collections -----------------------------------------------------------------------
  async function collectionNames(signal) {
    const list = await api('GET', '/v1/collections', undefined, signal);
    return [...list.collections.map((c) => c.name), ...list.aliases.map((a) => a.alias)].sort();
  }
  // A <select> of collections and aliases, bound to the shared current collection.
  async function collectionPicker(signal, onChange) {
    const names = await collectionNames(signal);
    if (!names.includes(state.collection)) state.collection = names[0] || '';
    const s = select('collection', names.map((n) => [n, n]), state.collection);
    s.addEventListener('change', () => { state.collection = s.value; if (onChange) onChange(); });
    return s;
  }

  async function pageCollections(main, signal) {
    const list = await api('GET', '/v1/collections', undefined, signal);
    // Search settings are in each collection's own record (GetCollection), read together.
    const details = await Promise.all(list.collections.map((c) => api('GET', `/v1/collections/${enc(c.name)}`, undefined, signal).catch(() => null)));
    main.append(el('h2', { text: 'Collections' }));
    const rows = list.collections.map((c, i) => [c, details[i] || {}]).map(([c, d]) => el('tr', {},
      el('td', {}, el('a', { href: `#/documents?c=${enc(c.name)}`, text: c.name })),
      el('td', {}, c.aliases.join(', ')),
      el('td', { class: 'num' }, c.document_count),
      el('td', { class: 'num' }, c.chunk_count),
      el('td', {}, el('code', { text: c.config.embedding_model }), ` (${c.dimension} d)`),
      el('td', {}, `${c.config.chunk_tokens} tokens, overlap ${c.config.chunk_overlap ?? ''}`),
      el('td', {}, settingsLabel(d.search_settings), d.proposed_settings ? el('div', { class: 'muted', text: `proposed: ${settingsLabel(d.proposed_settings)}` }) : null),
      el('td', {}, Object.entries(c.config.metadata_schema || {}).map(([k, t]) => el('div', {}, el('code', { text: k }), ` ${short(t)}`))),
      el('td', {}, when(c.created_unix_ms)),
      canAdmin() ? el('td', {}, el('button', {
        class: 'danger', type: 'button', 'aria-label': `Delete collection ${c.name}`,
        onclick: async () => {
          if (!confirm(`Delete collection ${c.name} and every document in it?`)) return;
          try { await api('DELETE', `/v1/collections/${enc(c.name)}`); toast(`Deleted ${c.name}`); route(); } catch (e) { toast(e.message); }
        },
      }, 'Delete')) : null,
    ));
    main.append(el('div', { class: 'scroll' }, el('table', {},
      el('caption', { class: 'muted', text: `${list.collections.length} collection(s)` }),
      el('thead', {}, el('tr', {}, ['name', 'aliases', 'documents', 'chunks', 'model', 'chunking', 'search settings', 'metadata schema', 'created']
        .map((t) => el('th', { scope: 'col', class: ['documents', 'chunks'].includes(t) ? 'num' : null, text: t })), canAdmin() ? el('th', { scope: 'col', text: 'actions' }) : null)),
      el('tbody', {}, rows))));

    main.append(el('h3', { text: 'Aliases' }));
    if (list.aliases.length) {
      main.append(el('div', { class: 'scroll' }, el('table', {},
        el('thead', {}, el('tr', {}, el('th', { scope: 'col', text: 'alias' }), el('th', { scope: 'col', text: 'collection' }), canAdmin() ? el('th', { scope: 'col', text: 'actions' }) : null)),
        el('tbody', {}, list.aliases.map((a) => el('tr', {},
          el('td', { text: a.alias }), el('td', { text: a.collection }),
          canAdmin() ? el('td', {}, el('button', {
            class: 'danger', type: 'button', 'aria-label': `Delete alias ${a.alias}`,
            onclick: async () => {
              try { await api('DELETE', `/v1/aliases/${enc(a.alias)}?expect_collection=${enc(a.collection)}`); toast(`Alias ${a.alias} removed`); route(); } catch (e) { toast(e.message); }
            },
          }, 'Delete')) : null))))));
    } else {
      main.append(el('p', { class: 'muted', text: 'No aliases.' }));
    }

    if (!canAdmin()) return;
    const out = el('div');
    const name = el('input', { name: 'name', required: true, pattern: '[A-Za-z0-9_-]{1,64}' });
    const model = el('input', { name: 'model', placeholder: 'server default' });
    const tokens = el('input', { name: 'chunk_tokens', type: 'number', min: 0, placeholder: 'default' });
    const overlap = el('input', { name: 'chunk_overlap', type: 'number', min: 0, placeholder: 'default' });
    main.append(el('h3', { text: 'Create a collection' }), el('form', {
      class: 'panel', onsubmit: async (ev) => {
        ev.preventDefault();
        out.replaceChildren();
        const config = { embedding_model: model.value.trim() };
        if (tokens.value) config.chunk_tokens = Number(tokens.value);
        if (overlap.value) config.chunk_overlap = Number(overlap.value);
        try { await api('POST', '/v1/collections', { name: name.value.trim(), config }); toast(`Created ${name.value}`); route(); } catch (e) { out.append(errorBox(e)); }
      },
    }, el('div', { class: 'row' }, field('Name', name), field('Embedding model', model), field('Chunk tokens', tokens), field('Overlap', overlap),
      el('button', { type: 'submit' }, 'Create')), out));

    const aliasOut = el('div');
    const alias = el('input', { name: 'alias', required: true, pattern: '[A-Za-z0-9_-]{1,64}' });
    const target = select('target', list.collections.map((c) => [c.name, c.name]), '');
    main.append(el('h3', { text: 'Point an alias' }), el('form', {
      class: 'panel', onsubmit: async (ev) => {
        ev.preventDefault();
        aliasOut.replaceChildren();
        const current = list.aliases.find((a) => a.alias === alias.value.trim());
        try {
          // Expect what this page showed: a switch made meanwhile by someone else is refused.
          await api('PUT', `/v1/aliases/${enc(alias.value.trim())}`, { collection: target.value, expect_collection: current ? current.collection : '' });
          toast(`Alias ${alias.value} -> ${target.value}`);
          route();
        } catch (e) { aliasOut.append(errorBox(e)); }
      },
    }, el('div', { class: 'row' }, field('Alias', alias), field('Collection', target), el('button', { type: 'submit' }, 'Set alias')), aliasOut));
  }

  // ---- documents ---------------------------------------------------------------------------
  async function pageDocuments(main, signal, params) {
    if (params.get('c')) state.collection = params.get('c');
    main.append(el('h2', { text: 'Documents' }));
    const results = el('div');
    const detail = el('div');
    const picker = await collectionPicker(signal, () => load(''));
    const where = el('input', { name: 'where', class: 'mono', placeholder: 'year >= 2020 AND lang = "en"', spellcheck: 'false' });
    const caret = el('div', { class: 'caret mono', 'aria-hidden': 'true' });
    const size = el('input', { name: 'page_size', type: 'number', min: 1, max: 1000, value: 50 });
    let token = '';
    async function load(pageToken) {
      results.replaceChildren();
      caret.textContent = '';
      detail.replaceChildren();
      if (!state.collection) { results.append(el('p', { class: 'muted', text: 'No collection.' })); return; }
      const q = new URLSearchParams({ include_metadata: 'true', page_size: size.value || '50' });
      if (where.value.trim()) q.set('where_text', where.value);
      if (pageToken) q.set('page_token', pageToken);
      try {
        const page = await api('GET', `/v1/collections/${enc(state.collection)}/documents?${q}`, undefined, signal);
        token = page.next_page_token;
        results.append(el('div', { class: 'scroll' }, el('table', {},
          el('caption', { class: 'muted', text: `${page.documents.length} document(s) on this page` }),
          el('thead', {}, el('tr', {}, ['id', 'title', 'chunks', 'metadata'].map((t) => el('th', { scope: 'col', text: t })))),
          el('tbody', {}, page.documents.map((d) => el('tr', {},
            el('td', {}, el('button', { type: 'button', class: 'secondary', onclick: () => showDocument(d.id), 'aria-label': `Show chunks of ${d.id}` }, d.id)),
            el('td', { text: d.title }),
            el('td', { class: 'num', text: d.chunk_count }),
            el('td', { class: 'mono', text: metadataText(d.typed_metadata) })))))));
        if (token) results.append(el('button', { type: 'button', onclick: () => load(token) }, 'Next page'));
      } catch (e) {
        const m = /column (\d+)/.exec(e.message || '');
        // The filter as typed, and a caret under the column the error names.
        if (m && e.code === 'INVALID_ARGUMENT') caret.textContent = `${where.value}\n${' '.repeat(Math.max(0, Number(m[1]) - 1))}^ column ${m[1]}`;
        results.append(errorBox(e));
      }
    }
    async function showDocument(id) {
      detail.replaceChildren(el('p', { class: 'muted', text: `Loading ${id}…` }));
      try {
        const r = await api('POST', `/v1/collections/${enc(state.collection)}/documents:get`, { ids: [id], include_chunks: true }, signal);
        detail.replaceChildren();
        for (const d of r.documents) {
          detail.append(el('h3', {}, `Document `, el('code', { text: d.document.id }), ` — ${d.chunk_count} chunk(s)`),
            d.document.title ? el('p', {}, el('strong', { text: d.document.title })) : null,
            el('p', { class: 'muted' }, `content hash ${d.content_hash}`, d.source ? ` · source ${d.source}` : ''),
            el('div', { class: 'scroll' }, el('table', {},
              el('thead', {}, el('tr', {}, ['#', 'bytes', 'chunk id', 'text'].map((t) => el('th', { scope: 'col', text: t })))),
              el('tbody', {}, d.chunks.map((c) => el('tr', { id: `chunk-${c.chunk_id}` },
                el('td', { class: 'num', text: c.ordinal }), el('td', { class: 'mono', text: `${c.start_byte}..${c.end_byte}` }),
                el('td', { class: 'mono', text: c.chunk_id }), el('td', { text: c.text })))))));
          if (canWrite()) {
            detail.append(el('button', {
              type: 'button', class: 'danger', onclick: async () => {
                if (!confirm(`Delete document ${id}?`)) return;
                try { await api('POST', `/v1/collections/${enc(state.collection)}/documents:delete`, { ids: [id] }); toast(`Deleted ${id}`); load(''); } catch (e) { toast(e.message); }
              },
            }, 'Delete document'));
          }
        }
        if (r.missing.length) detail.append(el('p', { class: 'muted', text: `Not found: ${r.missing.join(', ')}` }));
      } catch (e) { detail.replaceChildren(errorBox(e)); }
    }
    main.append(el('form', { class: 'panel', onsubmit: (ev) => { ev.preventDefault(); load(''); } },
      el('div', { class: 'row' }, field('Collection', picker), field('Filter', where, true), field('Page size', size), el('button', { type: 'submit' }, 'List')),
      caret), results, detail);
    await load('');
    // Linked from a hit or an answer's source: that document's chunks, the chunk marked.
    if (params.get('doc')) {
      await showDocument(params.get('doc'));
      const row = params.get('chunk') && document.getElementById(`chunk-${params.get('chunk')}`);
      if (row) { row.classList.add('target'); row.tabIndex = -1; row.scrollIntoView({ block: 'center' }); row.focus(); }
    }
  }
  // The documents page showing a hit's document with the hit's chunk marked.
  function chunkHref(collection, hit) {
    return `#/documents?${new URLSearchParams({ c: collection, doc: hit.document_id, chunk: hit.chunk_id })}`;
  }
  // Search settings in a few words: fusion, candidates per retriever, document scores.
  function settingsLabel(s) {
    if (!s) return '';
    const f = s.fusion || {};
    let out = 'weighted 0.60 / 0.40';
    if (f.rrf) {
      out = `RRF k ${fmt(f.rrf.k ?? 60, 0)}`;
      if (f.rrf.lexical_weight != null || f.rrf.dense_weight != null) out += ` (${fmt(f.rrf.lexical_weight ?? 1, 2)} / ${fmt(f.rrf.dense_weight ?? 1, 2)})`;
    } else if (f.weighted) {
      out = `weighted ${fmt(f.weighted.lexical_weight ?? 0.6, 2)} / ${fmt(f.weighted.dense_weight ?? 0.4, 2)}`;
    }
    out += s.candidates ? `, ${s.candidates} candidates` : ', default candidates';
    return out + (s.sum_decay ? `, chunk sum (decay ${fmt(s.sum_decay, 2)})` : ', best chunk');
  }
  function metadataText(typed) {
    return Object.entries(typed || {}).map(([k, v]) => {
      const value = v.string_list ? JSON.stringify(v.string_list.values) : JSON.stringify(Object.values(v)[0]);
      return `${k}=${value}`;
    }).join(' ');
  }

  // ---- search ------------------------------------------------------------------------------
  const MODES = [['SEARCH_MODE_HYBRID', 'hybrid'], ['SEARCH_MODE_LEXICAL', 'lexical'], ['SEARCH_MODE_DENSE', 'dense']];
  function fusionOf(kind, lw, dw, k) {
    const weights = {};
    if (lw.value !== '') weights.lexical_weight = Number(lw.value);
    if (dw.value !== '') weights.dense_weight = Number(dw.value);
    if (kind === 'rrf') return { rrf: { ...weights, ...(k.value !== '' ? { k: Number(k.value) } : {}) } };
    if (kind === 'weighted') return { weighted: weights };
    return undefined;
  }
  async function pageSearch(main, signal) {
    main.append(el('h2', { text: 'Search' }));
    const picker = await collectionPicker(signal);
    const query = el('input', { name: 'query', required: true });
    const mode = select('mode', MODES, 'SEARCH_MODE_HYBRID');
    const fusion = select('fusion', [['', 'default (weighted 0.6 / 0.4)'], ['weighted', 'weighted'], ['rrf', 'reciprocal rank']], '');
    const lw = el('input', { name: 'lexical_weight', type: 'number', step: 'any', min: 0, placeholder: 'default' });
    const dw = el('input', { name: 'dense_weight', type: 'number', step: 'any', min: 0, placeholder: 'default' });
    const k = el('input', { name: 'rrf_k', type: 'number', step: 'any', min: 0, placeholder: '60' });
    const where = el('input', { name: 'where', class: 'mono', spellcheck: 'false' });
    const topK = el('input', { name: 'top_k', type: 'number', min: 1, max: 1000, value: 10 });
    const group = el('input', { name: 'group', type: 'checkbox', checked: true });
    const out = el('div', { 'aria-live': 'polite' });
    main.append(el('form', {
      class: 'panel', onsubmit: async (ev) => {
        ev.preventDefault();
        out.replaceChildren(el('p', { class: 'muted', text: 'Searching…' }));
        const body = {
          query: query.value, mode: mode.value, top_k: Number(topK.value || 10), explain: true,
          group_by_document: group.checked, where_text: where.value,
        };
        const f = fusionOf(fusion.value, lw, dw, k);
        if (f) body.fusion = f;
        try {
          const r = await api('POST', `/v1/collections/${enc(state.collection)}/search`, body, signal);
          out.replaceChildren(renderHits(r));
        } catch (e) { out.replaceChildren(errorBox(e)); }
      },
    },
    el('div', { class: 'row' }, field('Collection', picker), field('Query', query, true)),
    el('div', { class: 'row' }, field('Mode', mode), field('Fusion', fusion), field('Lexical weight', lw), field('Dense weight', dw), field('RRF k', k)),
    el('div', { class: 'row' }, field('Filter', where, true), field('Top k', topK),
      el('div', { class: 'field' }, el('label', { for: group.id = uid('f') }, 'One hit per document'), group),
      el('button', { type: 'submit' }, 'Search'))), out);
  }
  function renderHits(r) {
    const wrap = el('div');
    wrap.append(el('p', { class: 'muted' }, `${r.hits.length} hit(s) of ${r.total_candidates} candidates · ${short(r.mode)} · ${(r.took_micros / 1000).toFixed(1)} ms`,
      r.degraded ? el('span', { class: 'bad', text: ` · degraded: ${r.warning}` }) : null));
    const maxScore = { lexical: 0, dense: 0 };
    for (const h of r.hits) {
      for (const side of ['lexical', 'dense']) {
        const x = h.explanation && h.explanation[side];
        if (x) maxScore[side] = Math.max(maxScore[side], x.score);
      }
    }
    const depth = Math.max(1, r.total_candidates);
    wrap.append(el('ol', { class: 'hits' }, r.hits.map((h, i) => el('li', { class: 'hit' },
      el('div', { class: 'hit-head' }, el('strong', {}, `${i + 1}. ${h.title || h.document_id}`),
        el('a', { class: 'muted mono chunk-link', href: chunkHref(state.collection, h), text: `${h.document_id} · chunk ${h.ordinal} · bytes ${h.start_byte}..${h.end_byte}` }),
        el('span', { class: 'badge', text: `score ${fmt(h.score)}` })),
      el('p', { text: h.text }),
      el('details', {}, el('summary', {}, 'Explanation'), explanationChart(h.explanation || {}, depth, maxScore),
        el('pre', { text: JSON.stringify(h.explanation || {}, null, 2) }))))));
    return wrap;
  }
  // Per retriever: a bar for the rank (longer is better: rank 1 is full) and one for the score
  // (relative to the best score of that retriever among these hits).
  function explanationChart(x, depth, maxScore) {
    const width = 360;
    const rowH = 22;
    const label = 120;
    const rows = [];
    const summary = [];
    ['lexical', 'dense'].forEach((side, i) => {
      const hit = x[side];
      const y = i * rowH * 2;
      if (!hit) {
        rows.push(svg('text', { x: 0, y: y + 15, fill: '#4a5563' }, `${side}: not a candidate`));
        summary.push(`${side}: not a candidate`);
        return;
      }
      const rankLen = Math.max(2, (width - label) * (1 - (hit.rank - 1) / depth));
      const scoreLen = Math.max(2, (width - label) * (maxScore[side] > 0 ? hit.score / maxScore[side] : 0));
      rows.push(svg('text', { x: 0, y: y + 15 }, `${side} rank ${hit.rank}`),
        svg('rect', { x: label, y: y + 4, width: rankLen, height: 14, fill: side === 'lexical' ? '#0b5cad' : '#8a3ffc' }),
        svg('text', { x: 0, y: y + rowH + 15 }, `score ${fmt(hit.score, 3)}`),
        svg('rect', { x: label, y: y + rowH + 4, width: scoreLen, height: 14, fill: side === 'lexical' ? '#0b5cad' : '#8a3ffc', 'fill-opacity': 0.55 }));
      summary.push(`${side}: rank ${hit.rank}, score ${fmt(hit.score, 3)}`);
    });
    return el('div', {},
      svg('svg', { class: 'chart', viewBox: `0 0 ${width} ${rowH * 4}`, width, height: rowH * 4, role: 'img', 'aria-label': summary.join('; '), 'font-size': 12 },
        svg('title', {}, summary.join('; ')), rows),
      el('div', { class: 'legend' }, el('span', {}, el('span', { class: 'swatch lexical' }), 'lexical'), el('span', {}, el('span', { class: 'swatch dense' }), 'dense')));
  }

  // ---- ask ---------------------------------------------------------------------------------
  async function pageAsk(main, signal) {
    main.append(el('h2', { text: 'Ask' }));
    const picker = await collectionPicker(signal);
    const question = el('input', { name: 'question', required: true });
    const mode = select('mode', MODES, 'SEARCH_MODE_HYBRID');
    const topK = el('input', { name: 'top_k', type: 'number', min: 1, max: 100, value: 8 });
    const where = el('input', { name: 'where', class: 'mono', spellcheck: 'false' });
    const stages = el('ul', { class: 'muted' });
    const tokens = el('pre', { 'aria-label': 'The reply as it arrives' });
    const out = el('div', { 'aria-live': 'polite' });
    main.append(el('form', {
      class: 'panel', onsubmit: async (ev) => {
        ev.preventDefault();
        stages.replaceChildren();
        tokens.textContent = '';
        out.replaceChildren();
        const body = { question: question.value, mode: mode.value, top_k: Number(topK.value || 8), where_text: where.value };
        try {
          await events('POST', `/v1/collections/${enc(state.collection)}/answer:stream`, body, signal, (_name, e) => {
            if (e.stage) {
              const s = e.stage;
              stages.append(el('li', {}, s.stage === 'generating' ? `generating (model call ${s.attempt})`
                : s.stage === 'retrieved' ? `retrieved ${s.hits} hit(s) in ${fmt(s.retrieve_ms, 1)} ms`
                  : `packed ${s.sources} source(s), ${s.left_out} left out`));
            } else if (e.token !== undefined) {
              tokens.textContent += e.token;
            } else if (e.discard !== undefined) {
              stages.append(el('li', { class: 'bad' }, `reply discarded: ${e.discard}`));
              tokens.textContent = '';
            } else if (e.result) {
              out.replaceChildren(renderAnswer(e.result));
            }
          });
        } catch (e) { out.replaceChildren(errorBox(e)); }
      },
    },
    el('div', { class: 'row' }, field('Collection', picker), field('Question', question, true)),
    el('div', { class: 'row' }, field('Mode', mode), field('Top k', topK), field('Filter', where, true), el('button', { type: 'submit' }, 'Ask'))),
    el('h3', { text: 'Progress' }), stages, tokens, out);
  }
  function renderAnswer(r) {
    const wrap = el('div');
    if (!r.grounded) {
      wrap.append(el('div', { class: 'error', text: `No grounded answer: ${r.no_answer_reason}` }));
    }
    let answer = null;
    try { answer = r.answer_json ? JSON.parse(r.answer_json) : null; } catch { answer = null; }
    if (answer && typeof answer.answer === 'string') {
      // The answer's text with each [n] linked to its source.
      const p = el('p', { class: 'answer' });
      for (const part of answer.answer.split(/(\[\d+\])/)) {
        const m = /^\[(\d+)\]$/.exec(part);
        p.append(m ? el('a', { class: 'cite', href: `#source-${m[1]}`, onclick: (ev) => { ev.preventDefault(); const t = document.getElementById(`source-${m[1]}`); if (t) { t.scrollIntoView(); t.focus(); } } }, part) : document.createTextNode(part));
      }
      wrap.append(el('h3', { text: 'Answer' }), p);
    }
    // The citations the reply declared, each linked to its source (and from there its chunk).
    if (r.citations.length) {
      wrap.append(el('p', { class: 'citations' }, 'Cites: ', r.citations.map((c, i) => [i ? ', ' : '',
        el('a', { class: 'cite', href: `#source-${c.source}`, onclick: (ev) => { ev.preventDefault(); const t = document.getElementById(`source-${c.source}`); if (t) { t.scrollIntoView(); t.focus(); } } },
          `[${c.source}] ${c.document_id}`)])));
    }
    if (r.answer_json) wrap.append(el('details', {}, el('summary', {}, 'Answer as validated JSON'), el('pre', { text: JSON.stringify(answer ?? r.answer_json, null, 2) })));
    wrap.append(el('p', { class: 'muted' }, `model ${r.model || '?'} · ${r.attempts} model call(s)`, r.attempts > 1 ? el('span', { class: 'bad', text: ` (${r.attempts - 1} repair(s) of a reply that broke the contract)` }) : '',
      ` · ${r.requests} request(s) · retrieval ${fmt(r.retrieve_ms, 1)} ms, generation ${fmt(r.generate_ms, 1)} ms`,
      r.retrieval_warning ? ` · ${r.retrieval_warning}` : ''));
    if (r.invalid_citations.length) wrap.append(el('p', { class: 'bad', text: `Citations refused (no such source): ${r.invalid_citations.join(', ')}` }));
    const cited = new Set(r.citations.map((c) => c.source));
    wrap.append(el('h3', { text: 'Sources' }), el('ol', { class: 'hits' }, r.sources.map((s) => el('li', { class: 'hit', id: `source-${s.number}`, tabindex: -1 },
      el('div', { class: 'hit-head' }, el('strong', {}, `[${s.number}] ${s.hit.title || s.hit.document_id}`), cited.has(s.number) ? el('span', { class: 'badge good', text: 'cited' }) : null,
        el('a', { href: chunkHref(state.collection, s.hit), class: 'mono chunk-link', text: `${s.hit.document_id} · chunk ${s.hit.chunk_id} · bytes ${s.hit.start_byte}..${s.hit.end_byte}` })),
      el('p', { text: s.hit.text })))));
    if (r.left_out.length) wrap.append(el('p', { class: 'muted', text: `Left out: ${r.left_out.map((l) => `${l.document_id} (${l.reason})`).join('; ')}` }));
    return wrap;
  }

  // ---- jobs --------------------------------------------------------------------------------
  async function pageJobs(main, signal) {
    main.append(el('h2', { text: 'Jobs' }));
    const table = el('tbody');
    const out = el('div');
    if (canWrite()) {
      const picker = await collectionPicker(signal);
      const path = el('input', { name: 'path', required: true, class: 'mono', placeholder: '/srv/import/corpus.jsonl' });
      const format = select('format', [['SOURCE_FORMAT_AUTO', 'auto'], ['SOURCE_FORMAT_FILES', 'files'], ['SOURCE_FORMAT_JSONL', 'jsonl']], 'SOURCE_FORMAT_AUTO');
      const sync = el('input', { type: 'checkbox', name: 'sync' });
      main.append(el('form', {
        class: 'panel', onsubmit: async (ev) => {
          ev.preventDefault();
          out.replaceChildren();
          try {
            const job = await api('POST', `/v1/collections/${enc(state.collection)}/jobs`, { source: { path: path.value, format: format.value }, sync: sync.checked });
            toast(`Job ${job.id} submitted`);
            table.prepend(jobRow(job));
            watch(job.id);
          } catch (e) { out.append(errorBox(e)); }
        },
      }, el('div', { class: 'row' }, field('Collection', picker), field('Server path', path, true), field('Format', format),
        el('div', { class: 'field' }, el('label', { for: sync.id = uid('f') }, 'Sync'), sync), el('button', { type: 'submit' }, 'Submit ingest job')), out));
    }
    const list = await api('GET', '/v1/jobs?page_size=50', undefined, signal);
    main.append(el('div', { class: 'scroll' }, el('table', {},
      el('thead', {}, el('tr', {}, ['id', 'collection', 'state', 'progress', 'counts', 'submitted', ''].map((t) => el('th', { scope: 'col', text: t })))), table)));
    for (const job of list.jobs) {
      table.append(jobRow(job));
      if (['JOB_STATE_QUEUED', 'JOB_STATE_RUNNING'].includes(job.state)) watch(job.id);
    }
    if (!list.jobs.length) main.append(el('p', { class: 'muted', text: 'No jobs.' }));
  }
  function jobRow(job) {
    const done = job.bytes_total ? Number(job.bytes_done) / Number(job.bytes_total) : (job.state === 'JOB_STATE_SUCCEEDED' ? 1 : 0);
    const c = job.counts || {};
    const live = ['JOB_STATE_QUEUED', 'JOB_STATE_RUNNING'].includes(job.state);
    return el('tr', { id: `job-${job.id}`, 'data-state': short(job.state) },
      el('td', { class: 'mono', text: job.id }),
      el('td', { text: job.collection }),
      el('td', {}, short(job.state), job.error ? el('div', { class: 'bad', text: job.error }) : null,
        job.failures && job.failures.length ? el('details', {}, el('summary', {}, `${c.failed} failure(s)`),
          el('ul', {}, job.failures.slice(0, 20).map((f) => el('li', { class: 'mono', text: `${f.location}: ${f.reason}` })))) : null),
      el('td', {}, el('progress', { max: 1, value: done, 'aria-label': `job ${job.id} progress` }), ` ${Math.round(done * 100)}%`),
      el('td', { class: 'mono', text: `seen ${c.seen} · new ${c.created} · updated ${c.updated} · unchanged ${c.unchanged} · failed ${c.failed} · chunks ${c.chunks}` }),
      el('td', { text: when(job.submitted_unix_ms) }),
      el('td', {}, live && canWrite() ? el('button', {
        type: 'button', class: 'danger', 'aria-label': `Cancel job ${job.id}`,
        onclick: async () => { try { replaceJob(await api('POST', `/v1/jobs/${enc(job.id)}/cancel`)); } catch (e) { toast(e.message); } },
      }, 'Cancel') : null));
  }
  function replaceJob(job) {
    const row = document.getElementById(`job-${job.id}`);
    if (row) row.replaceWith(jobRow(job));
  }
  function watch(id) {
    if (state.watches.has(id)) return;
    const stop = new AbortController();
    state.watches.set(id, stop);
    events('GET', `/v1/jobs/${enc(id)}/watch`, undefined, stop.signal, (_name, job) => replaceJob(job))
      .catch((e) => { if (e.name !== 'AbortError') toast(`watch of job ${id}: ${e.message}`); })
      .finally(() => state.watches.delete(id));
  }

  // ---- eval --------------------------------------------------------------------------------
  const RUNS = [
    { name: 'lexical', mode: 'SEARCH_MODE_LEXICAL' },
    { name: 'dense', mode: 'SEARCH_MODE_DENSE' },
    { name: 'hybrid', mode: 'SEARCH_MODE_HYBRID' },
    { name: 'hybrid-rrf', mode: 'SEARCH_MODE_HYBRID', fusion: { rrf: {} } },
  ];
  // BEIR files: queries.jsonl ({"_id", "text"}) and qrels TSV (query-id, corpus-id, score).
  function evalQueries(queriesText, qrelsText) {
    const text = new Map();
    for (const line of queriesText.split('\n')) {
      if (!line.trim()) continue;
      const q = JSON.parse(line);
      text.set(String(q._id), String(q.text));
    }
    const judged = new Map();
    for (const line of qrelsText.split('\n')) {
      const cols = line.trim().split(/\t|\s+/);
      if (cols.length < 3 || cols[0] === 'query-id') continue;
      const [qid, doc, grade] = cols.length >= 4 ? [cols[0], cols[2], cols[3]] : cols;
      if (!judged.has(qid)) judged.set(qid, {});
      judged.get(qid)[doc] = Number(grade);
    }
    return [...judged.entries()].filter(([qid]) => text.has(qid)).map(([id, judgments]) => ({ id, text: text.get(id), judgments }));
  }
  async function pageEval(main, signal) {
    main.append(el('h2', { text: 'Eval' }));
    // Judgments attached to the collection (PutEvalSplit), or the caller's files.
    const split = select('split', [['', 'files below']], '');
    const names = await collectionNames(signal);
    // Another generation, or (when the collection has a proposal) its proposed settings.
    const other = select('compare_with', [['', 'runs on this collection only']], '');
    const decisions = el('div', { class: 'decisions' });
    let info = null;
    const options = (node, pairs) => node.replaceChildren(...pairs.map(([v, t]) => el('option', { value: v, text: t })));
    const reload = async () => {
      let listed = { splits: [] };
      try { listed = await api('GET', `/v1/collections/${enc(state.collection)}/eval-sets`, undefined, signal); } catch (_) { /* none readable */ }
      options(split, [['', 'files below'], ...(listed.splits || []).map((x) => [x.split, `${x.split} (${x.queries} queries)`])]);
      try { info = await api('GET', `/v1/collections/${enc(state.collection)}`, undefined, signal); } catch (_) { info = null; }
      const proposal = info && info.proposed_settings
        ? [['@proposed', `proposed settings: ${settingsLabel(info.proposed_settings)} (against the adopted ${settingsLabel(info.search_settings)})`]] : [];
      options(other, [['', 'runs on this collection only'], ...proposal, ...names.filter((n) => n !== state.collection).map((n) => [n, n])]);
      renderDecisions(decisions, (info && info.gates) || []);
    };
    const picker = await collectionPicker(signal, reload);
    await reload();
    const queries = el('input', { type: 'file', name: 'queries', accept: '.jsonl,.json,.txt' });
    const qrels = el('input', { type: 'file', name: 'qrels', accept: '.tsv,.txt' });
    const runBoxes = RUNS.map((r) => el('input', { type: 'checkbox', name: `run-${r.name}`, checked: r.name !== 'hybrid-rrf' }));
    const progress = el('progress', { max: 1, value: 0, 'aria-label': 'eval progress' });
    const out = el('div', { 'aria-live': 'polite' });
    main.append(el('form', {
      class: 'panel', onsubmit: async (ev) => {
        ev.preventDefault();
        out.replaceChildren();
        const chosen = RUNS.filter((_, i) => runBoxes[i].checked);
        const body = { runs: chosen.map((r) => ({ name: r.name, mode: r.mode, fusion: r.fusion })) };
        if (split.value) {
          body.split = split.value;
        } else if (!queries.files[0] || !qrels.files[0]) {
          out.append(errorBox('Choose an attached split, or a queries file and a qrels file.')); return;
        } else {
          try { body.queries = evalQueries(await queries.files[0].text(), await qrels.files[0].text()); } catch (e) { out.append(errorBox(`The files do not parse: ${e.message}`)); return; }
        }
        if (other.value === '@proposed') {
          // Settings: hybrid with the adopted settings (a run that names none) against hybrid
          // with the proposed ones, on the same queries.
          const p = info.proposed_settings;
          body.runs = [{ name: 'adopted', mode: 'SEARCH_MODE_HYBRID' },
            { name: 'proposed', mode: 'SEARCH_MODE_HYBRID', fusion: p.fusion, candidates: p.candidates || 0, sum_decay: p.sum_decay || 0 }];
          body.compare = [{ baseline: 'adopted', candidate: 'proposed' }];
        } else if (other.value) {
          // The same runs on both collections (generations): each run on the other collection
          // against the same run on this one.
          const here = (r) => `${state.collection}:${r.name}`;
          const there = (r) => `${other.value}:${r.name}`;
          body.runs = chosen.flatMap((r) => [
            { name: here(r), mode: r.mode, fusion: r.fusion },
            { name: there(r), mode: r.mode, fusion: r.fusion, collection: other.value },
          ]);
          body.compare = chosen.map((r) => ({ baseline: here(r), candidate: there(r) }));
        }
        try {
          await events('POST', `/v1/collections/${enc(state.collection)}/eval`, body, signal, (_n, p) => {
            if (p.total) progress.value = p.done / p.total;
            if (p.result) out.replaceChildren(renderEval(p.result));
          });
        } catch (e) { out.replaceChildren(errorBox(e)); }
      },
    },
    el('div', { class: 'row' }, field('Collection', picker), field('Compare with', other), field('Attached split', split), field('queries.jsonl', queries), field('qrels (TSV)', qrels)),
    el('fieldset', {}, el('legend', { text: 'Runs' }), RUNS.map((r, i) => el('label', {}, runBoxes[i], ` ${r.name} `))),
    el('div', { class: 'row' }, el('button', { type: 'submit' }, 'Run eval'), el('div', { class: 'field grow' }, progress))),
    el('div', { class: 'results' }, out), el('h3', { text: 'Recorded decisions' }), decisions);
  }
  // The gate's decisions recorded with the collection (promotions, rollbacks, settings adopted
  // or refused, tunings' checks), newest first, each comparison as a chart.
  function renderDecisions(node, gates) {
    if (!gates.length) { node.replaceChildren(el('p', { class: 'muted', text: 'No promotion, rollback or settings decision is recorded with this collection.' })); return; }
    node.replaceChildren(...gates.map((g, i) => {
      const settings = g.action === 'adopt' || g.action === 'tune';
      const what = settings ? `settings ${g.run}` : `${g.candidate} against ${g.baseline}${g.alias ? ` behind alias ${g.alias}` : ''}`;
      const verdict = g.action === 'rollback' ? 'rolled back' : g.holds ? (g.switched ? 'held, switched' : 'held') : `refused: ${(g.worse || []).join(', ')} worse`;
      const c = { baseline: settings ? 'adopted' : g.baseline, candidate: settings ? 'proposed' : g.candidate, queries: g.queries, metrics: g.metrics || [],
        changed: [...(g.wins || []), ...(g.losses || []).slice().reverse()] };
      return el('details', { open: i === 0 },
        el('summary', {}, `${when(g.decided_unix_ms)} · ${g.action} · ${what} · `, el('span', { class: g.holds || g.action === 'rollback' ? 'good' : 'bad', text: verdict }),
          g.split ? ` · split ${g.split} of ${g.split_owner}` : '', g.caught_up ? ` · ${g.caught_up} document(s) caught up` : ''),
        c.metrics.length ? renderComparison(c) : el('p', { class: 'muted', text: 'Nothing was measured (a rollback returns to what the promotion had measured).' }));
    }));
  }
  function renderEval(result) {
    const wrap = el('div');
    const metrics = ['ndcg_at_10', 'recall_at_10', 'recall_at_100', 'mrr_at_10', 'map_at_100'];
    wrap.append(el('h3', { text: 'Runs' }), el('div', { class: 'scroll' }, el('table', {},
      el('thead', {}, el('tr', {}, el('th', { scope: 'col', text: 'run' }), metrics.map((m) => el('th', { scope: 'col', class: 'num', text: m })), el('th', { scope: 'col', class: 'num', text: 'p50 ms' }))),
      el('tbody', {}, result.runs.map((r) => el('tr', {}, el('td', { text: r.name }), metrics.map((m) => el('td', { class: 'num', text: fmt(r.metrics[m]) })), el('td', { class: 'num', text: fmt(r.latency.p50_ms, 1) })))))));
    wrap.append(barChart(result.runs.map((r) => [r.name, r.metrics.ndcg_at_10]), 'nDCG@10 per run'));
    if (result.skipped_queries) wrap.append(el('p', { class: 'muted', text: `${result.skipped_queries} queries skipped (no relevant judgment).` }));
    for (const c of result.comparisons || []) wrap.append(renderComparison(c));
    return wrap;
  }
  function barChart(pairs, title) {
    const width = 480;
    const row = 22;
    const label = 170;
    const max = Math.max(1e-9, ...pairs.map((p) => p[1]));
    return svg('svg', { class: 'chart', viewBox: `0 0 ${width} ${row * pairs.length + 4}`, width, height: row * pairs.length + 4, role: 'img', 'aria-label': `${title}: ${pairs.map((p) => `${p[0]} ${fmt(p[1])}`).join(', ')}`, 'font-size': 12 },
      svg('title', {}, title),
      pairs.map(([name, v], i) => [
        svg('text', { x: 0, y: i * row + 15 }, name.length > 26 ? `${name.slice(0, 25)}…` : name),
        svg('rect', { x: label, y: i * row + 4, width: Math.max(1, (width - label - 60) * (v / max)), height: 14, fill: '#0b5cad' }),
        svg('text', { x: width - 55, y: i * row + 15 }, fmt(v)),
      ]));
  }
  // A paired comparison: per metric the delta with its 95% interval (a dot and a whisker
  // around zero), the p-value and the wins and losses; then the queries that moved most.
  function renderComparison(c) {
    const width = 520;
    const row = 26;
    const label = 110;
    const span = Math.max(0.01, ...c.metrics.map((m) => Math.max(Math.abs(m.ci_low), Math.abs(m.ci_high), Math.abs(m.delta))));
    const x = (v) => label + ((v + span) / (2 * span)) * (width - label - 20);
    const chart = svg('svg', { class: 'chart', viewBox: `0 0 ${width} ${row * c.metrics.length + 20}`, width, height: row * c.metrics.length + 20, role: 'img', 'font-size': 12,
      'aria-label': c.metrics.map((m) => `${m.metric} ${fmt(m.delta)} [${fmt(m.ci_low)}, ${fmt(m.ci_high)}]`).join('; ') },
    svg('title', {}, `${c.candidate} against ${c.baseline}`),
    svg('line', { x1: x(0), x2: x(0), y1: 0, y2: row * c.metrics.length, stroke: '#4a5563', 'stroke-dasharray': '3 3' }),
    c.metrics.map((m, i) => {
      const y = i * row + 13;
      const color = m.ci_high < 0 ? '#a4161a' : m.ci_low > 0 ? '#17663a' : '#1b1f24';
      return [svg('text', { x: 0, y: y + 4 }, m.metric),
        svg('line', { x1: x(m.ci_low), x2: x(m.ci_high), y1: y, y2: y, stroke: color, 'stroke-width': 2 }),
        svg('circle', { cx: x(m.delta), cy: y, r: 4, fill: color })];
    }),
    svg('text', { x: x(-span), y: row * c.metrics.length + 16 }, fmt(-span, 3)),
    svg('text', { x: x(span) - 30, y: row * c.metrics.length + 16 }, `+${fmt(span, 3)}`));
    const best = c.changed.slice(0, 10).filter((q) => q.candidate > q.baseline);
    const worst = c.changed.slice(-10).reverse().filter((q) => q.candidate < q.baseline);
    return el('section', {},
      el('h3', {}, `${c.candidate} against ${c.baseline} (${c.queries} paired queries)`),
      chart,
      el('div', { class: 'scroll' }, el('table', {},
        el('thead', {}, el('tr', {}, ['metric', 'baseline', 'candidate', 'delta', '95% interval', 'p', 'wins', 'losses', 'ties'].map((t) => el('th', { scope: 'col', text: t })))),
        el('tbody', {}, c.metrics.map((m) => el('tr', {}, el('td', { text: m.metric }), el('td', { class: 'num', text: fmt(m.baseline) }), el('td', { class: 'num', text: fmt(m.candidate) }),
          el('td', { class: `num ${m.ci_high < 0 ? 'bad' : m.ci_low > 0 ? 'good' : ''}`, text: (m.delta >= 0 ? '+' : '') + fmt(m.delta) }),
          el('td', { class: 'num', text: `[${fmt(m.ci_low)}, ${fmt(m.ci_high)}]` }), el('td', { class: 'num', text: fmt(m.p_value, 3) }),
          el('td', { class: 'num', text: m.wins }), el('td', { class: 'num', text: m.losses }), el('td', { class: 'num', text: m.ties })))))),
      el('h3', { text: 'Queries that moved most (nDCG@10)' }),
      barChangeList(best, 'wins'), barChangeList(worst, 'losses'));
  }
  function barChangeList(list, title) {
    if (!list.length) return el('p', { class: 'muted', text: `No ${title}.` });
    return el('div', {}, el('strong', { text: title }), el('ul', {}, list.map((q) => el('li', { class: q.candidate > q.baseline ? 'good' : 'bad' },
      el('code', { text: q.query_id }), ` ${fmt(q.baseline)} → ${fmt(q.candidate)} (${q.candidate >= q.baseline ? '+' : ''}${fmt(q.candidate - q.baseline)})`))));
  }

  // ---- routing -----------------------------------------------------------------------------
  const PAGES = { collections: pageCollections, documents: pageDocuments, search: pageSearch, ask: pageAsk, jobs: pageJobs, eval: pageEval };
  async function route() {
    const hash = location.hash.replace(/^#\/?/, '') || 'collections';
    const [name, query] = hash.split('?');
    const page = PAGES[name] ? name : 'collections';
    for (const a of document.querySelectorAll('nav a')) {
      if (a.dataset.page === page) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    }
    document.getElementById('toast').classList.remove('show');
    if (state.page) state.page.abort();
    for (const stop of state.watches.values()) stop.abort();
    state.watches.clear();
    state.page = new AbortController();
    const main = document.getElementById('main');
    // Each visit renders into a view of its own: a page left while it was still rendering
    // (its requests answered after all) writes into a view no longer shown, never into the
    // next page's.
    const view = el('div', { class: 'view' });
    main.replaceChildren(view);
    const current = state.page;
    const started = performance.now();
    try {
      await PAGES[page](view, state.page.signal, new URLSearchParams(query || ''));
    } catch (e) {
      if (e.name === 'AbortError') return;
      view.append(errorBox(e));
      if (e.status === 401) view.append(el('p', { text: 'Type an API key above.' }));
    }
    if (state.page !== current) return;
    // For the browser tests: when the page finished rendering, and how long it took.
    main.dataset.loaded = page;
    main.dataset.loadMs = String(Math.round(performance.now() - started));
  }

  document.getElementById('key-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const input = document.getElementById('key');
    state.key = input.value.trim();
    input.value = '';
    await identify();
    route();
  });
  window.addEventListener('hashchange', route);
  identify().then(route);
})();
