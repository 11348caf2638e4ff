// The Gumtree web console. No build step: plain modern JavaScript.
// Every call goes to the console's own API, which runs the same EC2,
// CloudWatch and S3 operations the command-line clients reach.
'use strict';

// `gen` counts page changes: an answer that arrives after the page changed
// is dropped (Superseded), so a slow page never draws over a newer one.
const S = { session: null, timers: [], cleanups: [], gen: 0 };
const EC2_VERSION = '2016-11-15';

// ---------- small helpers ----------
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'value') el.value = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === undefined || kid === null || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}
const $ = (sel, root) => (root || document).querySelector(sel);
function toast(msg, bad) {
  const t = h('div', { class: 'toast' + (bad ? ' bad' : '') }, msg);
  $('#toasts').append(t);
  setTimeout(() => t.remove(), bad ? 8000 : 4000);
}
function when(ms) {
  if (!ms) return '';
  const d = typeof ms === 'number' ? new Date(ms) : new Date(ms);
  return isNaN(d) ? String(ms) : d.toLocaleString();
}
function list(x) {
  if (Array.isArray(x)) return x;
  if (x && typeof x === 'object') return [x];
  return [];
}
function bytes(n) {
  n = Number(n) || 0;
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + u[i];
}
function stateTag(s) { return h('span', { class: 'state ' + s }, s); }
function every(ms, fn) { const t = setInterval(fn, ms); S.timers.push(t); return t; }
function onLeave(fn) { S.cleanups.push(fn); }
function b64utf8(text) { return btoa(unescape(encodeURIComponent(text))); }
function unb64(b) {
  try { return new TextDecoder().decode(Uint8Array.from(atob(b || ''), c => c.charCodeAt(0))); } catch (e) { return ''; }
}

class Superseded extends Error {}
function fresh(gen) { if (gen !== S.gen) throw new Superseded('the page changed'); }

class ApiError extends Error {
  constructor(code, message, status) { super(message); this.code = code; this.status = status; }
  toString() { return (this.code ? this.code + ': ' : '') + this.message; }
}

// ---------- the console's API ----------
async function api(path, opts) {
  opts = opts || {};
  const headers = Object.assign({}, opts.headers || {});
  if (opts.method && opts.method !== 'GET' && S.session) headers['X-CSRF-Token'] = S.session.csrf;
  let body = opts.body;
  if (opts.json !== undefined) { headers['Content-Type'] = 'application/json'; body = JSON.stringify(opts.json); }
  const gen = S.gen;
  const r = await fetch(path, { method: opts.method || 'GET', headers, body, credentials: 'same-origin' });
  const text = await r.text();
  if (!path.startsWith('/api/sign') && path !== '/api/session') fresh(gen);
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (r.status === 401 && path !== '/api/signin' && path !== '/api/session') { signedOut(); }
  if (!r.ok) {
    const e = (data && data.error) || { code: 'HTTP' + r.status, message: text.slice(0, 300) };
    throw new ApiError(e.code, e.message, r.status);
  }
  return data;
}

function xmlToObj(el) {
  const kids = Array.from(el.children);
  if (!kids.length) return el.textContent;
  if (kids.every(k => k.localName === 'item' || k.localName === 'member')) return kids.map(xmlToObj);
  const o = {};
  for (const k of kids) {
    const v = xmlToObj(k);
    const n = k.localName;
    if (n in o) {
      if (!(o[n] && o[n].__many)) { o[n] = [o[n]]; Object.defineProperty(o[n], '__many', { value: true }); }
      o[n].push(v);
    } else o[n] = v;
  }
  return o;
}

function xmlError(text, status) {
  const doc = new DOMParser().parseFromString(text, 'application/xml');
  const code = doc.querySelector('Code');
  const msg = doc.querySelector('Message');
  return new ApiError(code ? code.textContent : 'HTTP' + status, msg ? msg.textContent : text.slice(0, 300), status);
}

// One EC2 (or Euare) Query action, as the console's user.
async function ec2(action, params) {
  const form = new URLSearchParams(Object.assign({ Action: action, Version: EC2_VERSION }, params || {}));
  const gen = S.gen;
  const r = await fetch('/api/ec2', {
    method: 'POST', credentials: 'same-origin',
    headers: { 'X-CSRF-Token': S.session.csrf, 'Content-Type': 'application/x-www-form-urlencoded' },
    body: form,
  });
  const text = await r.text();
  fresh(gen);
  if (r.status === 401) { signedOut(); }
  if (!r.ok) throw xmlError(text, r.status);
  return xmlToObj(new DOMParser().parseFromString(text, 'application/xml').documentElement);
}

// EC2's numbered list parameters: ('InstanceId', ['i-1']) → InstanceId.1=i-1.
function numbered(name, values, into) {
  into = into || {};
  values.forEach((v, i) => { into[name + '.' + (i + 1)] = v; });
  return into;
}
function filters(fs, into) {
  into = into || {};
  fs.forEach(([name, values], i) => {
    into['Filter.' + (i + 1) + '.Name'] = name;
    values.forEach((v, j) => { into['Filter.' + (i + 1) + '.Value.' + (j + 1)] = v; });
  });
  return into;
}

// One CloudWatch operation in its JSON protocol.
async function cw(op, input) {
  const gen = S.gen;
  const r = await fetch('/api/cloudwatch', {
    method: 'POST', credentials: 'same-origin',
    headers: { 'X-CSRF-Token': S.session.csrf, 'Content-Type': 'application/x-amz-json-1.0', 'X-Amz-Target': 'GraniteServiceVersion20100801.' + op },
    body: JSON.stringify(input || {}),
  });
  const data = await r.json().catch(() => ({}));
  fresh(gen);
  if (!r.ok) throw new ApiError((data.__type || '').split('#').pop() || 'HTTP' + r.status, data.message || data.Message || '', r.status);
  return data;
}

// An S3 request to Walrus, signed as the user by the console.
function s3path(bucket, key) {
  let p = '/api/s3/';
  if (bucket) p += encodeURIComponent(bucket);
  if (key !== undefined) p += '/' + key.split('/').map(encodeURIComponent).join('/');
  return p;
}
async function s3(method, bucket, key, query, body) {
  const q = query ? '?' + new URLSearchParams(query) : '';
  const gen = S.gen;
  const r = await fetch(s3path(bucket, key) + q, {
    method, credentials: 'same-origin', body,
    headers: method === 'GET' ? {} : { 'X-CSRF-Token': S.session.csrf },
  });
  const text = await r.text();
  fresh(gen);
  if (!r.ok) {
    try { const j = JSON.parse(text); throw new ApiError(j.error.code, j.error.message, r.status); } catch (e) { if (e instanceof ApiError) throw e; }
    throw xmlError(text, r.status);
  }
  return text ? xmlToObj(new DOMParser().parseFromString(text, 'application/xml').documentElement) : {};
}

// ---------- building blocks ----------
function errorBox(e) { return h('div', { class: 'error', role: 'alert' }, String(e)); }

function table(columns, rows, opts) {
  opts = opts || {};
  if (!rows.length) return h('p', { class: 'muted empty' }, opts.empty || 'Nothing here yet.');
  return h('table', { class: 'list', id: opts.id },
    h('thead', {}, h('tr', {}, columns.map(c => h('th', {}, c[0])))),
    h('tbody', {}, rows.map(r => h('tr', { 'data-id': opts.key ? opts.key(r) : null }, columns.map(c => h('td', {}, c[1](r)))))));
}

// A dialog with fields; `submit` gets the values and may throw to show an error.
function dialog(title, fields, submit, opts) {
  opts = opts || {};
  const back = h('div', { class: 'dialog-back' });
  const err = h('div');
  const inputs = {};
  const form = h('form', { class: 'dialog', role: 'dialog', 'aria-label': title },
    h('h2', {}, title),
    fields.map(f => {
      let input;
      if (f.type === 'select') {
        input = h('select', { name: f.name, multiple: f.multiple }, (f.options || []).map(o => {
          const [v, label] = Array.isArray(o) ? o : [o, o];
          return h('option', { value: v, selected: f.value === v || (f.multiple && (f.value || []).includes(v)) }, label);
        }));
      } else if (f.type === 'textarea') {
        input = h('textarea', { name: f.name, placeholder: f.placeholder || '' });
        input.value = f.value || '';
      } else if (f.type === 'file') {
        input = h('input', { type: 'file', name: f.name });
      } else {
        input = h('input', { type: f.type || 'text', name: f.name, value: f.value, placeholder: f.placeholder, min: f.min, autocomplete: 'off' });
      }
      inputs[f.name] = input;
      return h('div', { class: 'field' }, h('label', {}, f.label), input, f.hint ? h('div', { class: 'hint' }, f.hint) : null);
    }),
    opts.extra || null,
    err,
    h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'secondary', onclick: () => back.remove() }, 'Cancel'),
      h('button', { type: 'submit' }, opts.ok || 'OK')));
  form.addEventListener('submit', async ev => {
    ev.preventDefault();
    const values = {};
    for (const [n, i] of Object.entries(inputs)) {
      values[n] = i.type === 'file' ? i.files[0] : i.multiple ? Array.from(i.selectedOptions).map(o => o.value) : i.value;
    }
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    err.replaceChildren();
    try {
      const keep = await submit(values, form);
      if (!keep) back.remove();
    } catch (e) {
      if (e instanceof Superseded) back.remove(); else err.replaceChildren(errorBox(e));
    } finally { button.disabled = false; }
  });
  back.append(form);
  document.body.append(back);
  const first = form.querySelector('input,select,textarea');
  if (first) first.focus();
  return form;
}

async function act(what, fn) {
  try { await fn(); toast(what); route(); } catch (e) { if (!(e instanceof Superseded)) toast(String(e), true); }
}

// ---------- pages ----------
const PAGES = {};
const NAV = [
  ['Cloud', [['dashboard', 'Dashboard'], ['instances', 'Instances'], ['images', 'Images'], ['volumes', 'Volumes'],
    ['keypairs', 'Key pairs'], ['groups', 'Security groups'], ['addresses', 'Elastic IPs'], ['buckets', 'Buckets'], ['keys', 'Access keys']]],
  ['Administration', [['admin-nodes', 'Services & nodes'], ['admin-monitor', 'Resource monitor'], ['admin-accounts', 'Accounts'],
    ['admin-instances', 'All instances'], ['admin-events', 'Events']], true],
];

function shell(title, content) {
  const page = (location.hash.slice(2) || 'dashboard').split('/')[0];
  const nav = h('nav', { class: 'side' }, h('div', { class: 'brand' }, 'Gumtree'),
    NAV.filter(([, , admin]) => !admin || S.session.admin).map(([group, items]) => [
      h('div', { class: 'group' }, group),
      items.map(([id, label]) => h('a', { href: '#/' + id, class: page === id ? 'active' : null, id: 'nav-' + id }, label)),
    ]));
  const main = h('main', {},
    h('header', { class: 'top' }, h('h1', {}, title),
      h('div', { class: 'who' }, h('span', { id: 'whoami' }, S.session.user + ' @ ' + S.session.account + (S.session.admin ? ' (administrator)' : '')),
        h('button', { class: 'secondary', id: 'signout', onclick: signOut }, 'Sign out'))),
    content);
  $('#app').replaceChildren(h('div', { class: 'shell' }, nav, main));
  return main;
}

async function route() {
  S.gen += 1;
  S.timers.forEach(clearInterval); S.timers = [];
  S.cleanups.forEach(f => { try { f(); } catch (e) { /* gone */ } }); S.cleanups = [];
  if (!S.session) return;
  const parts = (location.hash.slice(2) || 'dashboard').split('/').map(decodeURIComponent);
  const page = PAGES[parts[0]] || PAGES.dashboard;
  try { await page(...parts.slice(1)); } catch (e) {
    if (e instanceof Superseded || (e instanceof ApiError && e.status === 401)) return;
    shell('Error', errorBox(e));
  }
}

// ----- sign-in -----
function signInPage(message) {
  const err = h('div', {}, message ? errorBox(message) : null);
  let mode = 'password';
  const fields = h('div');
  const draw = () => {
    fields.replaceChildren(...(mode === 'password' ? [
      h('div', { class: 'field' }, h('label', {}, 'Account'), h('input', { type: 'text', name: 'account', id: 'account', autocomplete: 'organization' })),
      h('div', { class: 'field' }, h('label', {}, 'User'), h('input', { type: 'text', name: 'user', id: 'user', value: 'admin', autocomplete: 'username' })),
      h('div', { class: 'field' }, h('label', {}, 'Password'), h('input', { type: 'password', name: 'password', id: 'password', autocomplete: 'current-password' })),
    ] : [
      h('div', { class: 'field' }, h('label', {}, 'Access key ID'), h('input', { type: 'text', name: 'access_key_id', id: 'access_key_id' })),
      h('div', { class: 'field' }, h('label', {}, 'Secret access key'), h('input', { type: 'password', name: 'secret_access_key', id: 'secret_access_key' })),
    ]));
  };
  draw();
  const form = h('form', { class: 'panel signin', id: 'signin' },
    h('h1', {}, 'Sign in to Gumtree'),
    h('div', { class: 'tabs' },
      h('button', { type: 'button', class: 'active', id: 'with-password', onclick: ev => { mode = 'password'; draw(); form.querySelectorAll('.tabs button').forEach(b => b.classList.toggle('active', b === ev.target)); } }, 'Password'),
      h('button', { type: 'button', id: 'with-key', onclick: ev => { mode = 'key'; draw(); form.querySelectorAll('.tabs button').forEach(b => b.classList.toggle('active', b === ev.target)); } }, 'Access key')),
    fields, err,
    h('div', { class: 'actions' }, h('button', { type: 'submit', id: 'signin-button' }, 'Sign in')));
  form.addEventListener('submit', async ev => {
    ev.preventDefault();
    const data = Object.fromEntries(new FormData(form).entries());
    err.replaceChildren();
    try {
      S.session = await api('/api/signin', { method: 'POST', json: data });
      if (!location.hash) location.hash = '#/dashboard';
      route();
    } catch (e) { err.replaceChildren(errorBox(e)); }
  });
  $('#app').replaceChildren(form);
}

function signedOut() {
  if (!S.session) return;
  S.session = null;
  S.timers.forEach(clearInterval); S.timers = [];
  signInPage('Your session ended: sign in again.');
}

async function signOut() {
  try { await api('/api/signout', { method: 'POST' }); } catch (e) { /* gone already */ }
  S.session = null;
  signInPage();
}

// ----- dashboard -----
PAGES.dashboard = async () => {
  const [inst, vols, addrs, attrs] = await Promise.all([
    ec2('DescribeInstances', {}), ec2('DescribeVolumes', {}), ec2('DescribeAddresses', {}), ec2('DescribeAccountAttributes', {}),
  ]);
  const instances = list(inst.reservationSet).flatMap(r => list(r.instancesSet));
  const count = s => instances.filter(i => i.instanceState.name === s).length;
  const attr = {};
  for (const a of list(attrs.accountAttributeSet)) attr[a.attributeName] = list(a.attributeValueSet).map(v => v.attributeValue).join(', ');
  const live = instances.filter(i => i.instanceState.name !== 'terminated').length;
  const eips = list(addrs.addressesSet).length;
  const use = (label, used, limit) => {
    const max = Number(limit);
    return h('div', { class: 'field' }, h('label', {}, label),
      Number.isFinite(max) && max > 0 ? capacity(used, max, '') : h('span', { class: 'muted' }, used + ' (no limit)'));
  };
  shell('Dashboard', [
    h('div', { class: 'cards' },
      [['Running', count('running')], ['Pending', count('pending')], ['Stopped', count('stopped')],
        ['Volumes', list(vols.volumeSet).length], ['Elastic IPs', eips]]
        .map(([l, n]) => h('div', { class: 'card' }, h('div', { class: 'muted' }, l), h('div', { class: 'big' }, n)))),
    h('div', { class: 'panel', style: 'margin-top:16px', id: 'quota' }, h('h3', {}, 'Quota use'),
      use('Instances (not terminated)', live, attr['max-instances']),
      use('Elastic IPs', eips, attr['max-elastic-ips'])),
  ]);
};

// ----- instances -----
const PAGE_SIZES = [25, 50, 100, 200];
const listState = { size: 50, tokens: [null], at: 0, state: '', text: '' };

PAGES.instances = async id => {
  if (id) return instancePage(id);
  const content = h('div');
  const main = shell('Instances', content);
  const stateSel = h('select', { id: 'state-filter', onchange: () => { listState.state = stateSel.value; listState.tokens = [null]; listState.at = 0; load(); } },
    ['', 'pending', 'running', 'stopping', 'stopped', 'shutting-down', 'terminated'].map(s => h('option', { value: s, selected: listState.state === s }, s || 'any state')));
  const text = h('input', { type: 'text', id: 'id-filter', placeholder: 'instance id contains…', value: listState.text });
  text.addEventListener('change', () => { listState.text = text.value.trim(); listState.tokens = [null]; listState.at = 0; load(); });
  const sizeSel = h('select', { id: 'page-size', onchange: () => { listState.size = Number(sizeSel.value); listState.tokens = [null]; listState.at = 0; load(); } },
    PAGE_SIZES.map(n => h('option', { value: n, selected: listState.size === n }, n + ' a page')));
  const prev = h('button', { class: 'secondary', id: 'prev-page', onclick: () => { listState.at--; load(); } }, '‹ Previous');
  const next = h('button', { class: 'secondary', id: 'next-page', onclick: () => { listState.at++; load(); } }, 'Next ›');
  const where = h('span', { class: 'muted', id: 'page-info' });
  const body = h('div', { id: 'instance-list' });
  content.append(h('div', { class: 'panel' },
    h('div', { class: 'toolbar' }, h('button', { id: 'launch', onclick: launchWizard }, 'Launch instances'), stateSel, text, h('span', { class: 'grow' }), sizeSel, prev, where, next),
    body));
  async function load() {
    const t0 = performance.now();
    const params = { MaxResults: listState.size };
    const token = listState.tokens[listState.at];
    if (token) params.NextToken = token;
    const fs = [];
    if (listState.state) fs.push(['instance-state-name', [listState.state]]);
    if (listState.text) fs.push(['instance-id', ['*' + listState.text + '*']]);
    filters(fs, params);
    let r;
    try { r = await ec2('DescribeInstances', params); } catch (e) { body.replaceChildren(errorBox(e)); return; }
    const rows = list(r.reservationSet).flatMap(res => list(res.instancesSet).map(i => Object.assign(i, { groups: list(res.groupSet) })));
    listState.tokens[listState.at + 1] = r.nextToken || null;
    body.replaceChildren(table([
      ['Instance', i => h('a', { href: '#/instances/' + i.instanceId }, i.instanceId)],
      ['State', i => stateTag(i.instanceState.name)],
      ['Type', i => i.instanceType],
      ['Image', i => i.imageId],
      ['Zone', i => i.placement && i.placement.availabilityZone],
      ['Private IP', i => i.privateIpAddress || ''],
      ['Public IP', i => i.ipAddress || ''],
      ['Key', i => i.keyName || ''],
      ['Launched', i => when(i.launchTime)],
    ], rows, { id: 'instances', key: i => i.instanceId, empty: 'No instances match.' }));
    prev.disabled = listState.at === 0;
    next.disabled = !r.nextToken;
    where.textContent = 'page ' + (listState.at + 1);
    body.dataset.renderMs = (performance.now() - t0).toFixed(1);
    body.dataset.rows = rows.length;
  }
  await load();
  every(5000, load);
};

async function launchWizard() {
  let images, types, keys, groups;
  try {
    [images, types, keys, groups] = await Promise.all([
      ec2('DescribeImages', filters([['image-type', ['machine']]])), ec2('DescribeInstanceTypes', {}),
      ec2('DescribeKeyPairs', {}), ec2('DescribeSecurityGroups', {})]);
  } catch (e) { toast(String(e), true); return; }
  const imgs = list(images.imagesSet);
  const tys = list(types.instanceTypeSet);
  dialog('Launch instances', [
    { name: 'image', label: 'Image', type: 'select', options: imgs.map(i => [i.imageId, i.imageId + ' — ' + (i.name || i.imageLocation || '')]) },
    { name: 'type', label: 'Instance type', type: 'select', value: 't1.micro', options: tys.map(t => [t.instanceType, t.instanceType + ' (' + (t.vCpuInfo ? t.vCpuInfo.defaultVCpus : '?') + ' vCPU, ' + (t.memoryInfo ? t.memoryInfo.sizeInMiB : '?') + ' MiB)']) },
    { name: 'key', label: 'Key pair', type: 'select', options: [['', 'none']].concat(list(keys.keySet).map(k => k.keyName)) },
    { name: 'groups', label: 'Security groups', type: 'select', multiple: true, value: ['default'], options: list(groups.securityGroupInfo).map(g => [g.groupName, g.groupName + ' (' + g.groupId + ')']) },
    { name: 'userData', label: 'User data', type: 'textarea', hint: 'Handed to the instance through the metadata service.' },
    { name: 'count', label: 'How many', type: 'number', value: '1', min: '1' },
    { name: 'monitoring', label: 'Detailed monitoring (1-minute metrics)', type: 'select', options: [['false', 'off'], ['true', 'on']] },
  ], async v => {
    const p = { ImageId: v.image, InstanceType: v.type, MinCount: v.count, MaxCount: v.count };
    if (v.key) p.KeyName = v.key;
    numbered('SecurityGroup', v.groups, p);
    if (v.userData) p.UserData = b64utf8(v.userData);
    if (v.monitoring === 'true') p['Monitoring.Enabled'] = 'true';
    const r = await ec2('RunInstances', p);
    const ids = list(r.instancesSet).map(i => i.instanceId);
    toast('Launched ' + ids.join(', '));
    route();
  }, { ok: 'Launch' });
}

async function instanceAction(action, id) {
  await act(action.replace('Instances', '') + ' ' + id, () => ec2(action, numbered('InstanceId', [id])));
}

async function instancePage(id) {
  const r = await ec2('DescribeInstances', numbered('InstanceId', [id]));
  const res = list(r.reservationSet)[0];
  const i = res && list(res.instancesSet)[0];
  if (!i) throw new ApiError('InvalidInstanceID.NotFound', 'No instance ' + id);
  const state = i.instanceState.name;
  const facts = h('dl', { class: 'facts', id: 'facts' }, [
    ['State', stateTag(state)], ['Type', i.instanceType], ['Image', i.imageId], ['Zone', i.placement && i.placement.availabilityZone],
    ['Private IP', i.privateIpAddress || ''], ['Public IP', i.ipAddress || ''], ['Key pair', i.keyName || ''],
    ['Security groups', list(res.groupSet).map(g => g.groupName).join(', ')], ['Launched', when(i.launchTime)],
    ['Monitoring', i.monitoring ? i.monitoring.state : ''], ['Reason', i.stateReason ? i.stateReason.message : ''],
  ].flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  const tabBody = h('div', { id: 'tab-body' });
  const tabs = [['console', 'Console log', consoleTab], ['serial', 'Serial console', serialTab], ['monitoring', 'Monitoring', monitoringTab]];
  const tabBar = h('div', { class: 'tabs' }, tabs.map(([k, label, fn]) => h('button', {
    id: 'tab-' + k, onclick: ev => { tabBar.querySelectorAll('button').forEach(b => b.classList.toggle('active', b === ev.target)); S.cleanups.forEach(f => f()); S.cleanups = []; fn(id, tabBody); },
  }, label)));
  shell('Instance ' + id, [
    h('div', { class: 'panel' },
      h('div', { class: 'toolbar' },
        h('button', { id: 'stop', disabled: state !== 'running', onclick: () => instanceAction('StopInstances', id) }, 'Stop'),
        h('button', { id: 'start', disabled: state !== 'stopped', onclick: () => instanceAction('StartInstances', id) }, 'Start'),
        h('button', { id: 'reboot', disabled: state !== 'running', onclick: () => instanceAction('RebootInstances', id) }, 'Reboot'),
        h('button', { id: 'terminate', class: 'danger', disabled: state === 'terminated', onclick: () => { if (confirm('Terminate ' + id + '?')) instanceAction('TerminateInstances', id); } }, 'Terminate'),
        h('span', { class: 'grow' }), h('a', { href: '#/instances' }, 'All instances')),
      facts),
    h('div', { class: 'panel' }, tabBar, tabBody),
  ]);
  tabBar.querySelector('button').click();
  // The state follows the instance until it settles.
  if (!['running', 'stopped', 'terminated'].includes(state)) {
    every(2000, async () => {
      const again = await ec2('DescribeInstances', numbered('InstanceId', [id])).catch(() => null);
      const now = again && list(list(again.reservationSet)[0].instancesSet)[0];
      if (now && now.instanceState.name !== state) route();
    });
  }
}

function consoleTab(id, into) {
  const pre = h('pre', { class: 'console', id: 'console-log' }, 'Reading the console…');
  const follow = h('input', { type: 'checkbox', id: 'follow', checked: true });
  into.replaceChildren(h('div', { class: 'toolbar' }, h('label', {}, follow, ' follow live')), pre);
  let last = null;
  const load = async () => {
    try {
      const r = await ec2('GetConsoleOutput', { InstanceId: id });
      const text = unb64(r.output);
      if (text !== last) {
        last = text;
        pre.textContent = text || '(nothing on the console yet)';
        if (follow.checked) pre.scrollTop = pre.scrollHeight;
      }
    } catch (e) { pre.textContent = String(e); }
  };
  load();
  const t = setInterval(() => { if (follow.checked) load(); }, 2000);
  onLeave(() => clearInterval(t));
}

function serialTab(id, into) {
  const box = h('div', { class: 'terminal', id: 'serial' });
  const status = h('span', { class: 'muted', id: 'serial-status' }, 'connecting…');
  into.replaceChildren(h('div', { class: 'toolbar' }, status, h('span', { class: 'muted' }, ' Type to talk to the instance\'s first serial port.')), box);
  const term = new window.Terminal({ cols: 100, rows: 24, convertEol: false, fontSize: 13, cursorBlink: true });
  term.open(box);
  const ws = new WebSocket('wss://' + location.host + '/api/serial/' + encodeURIComponent(id) + '?csrf=' + encodeURIComponent(S.session.csrf));
  ws.binaryType = 'arraybuffer';
  ws.onopen = () => { status.textContent = 'connected'; term.focus(); };
  ws.onmessage = ev => {
    if (typeof ev.data === 'string') { status.textContent = ev.data; return; }
    term.write(new Uint8Array(ev.data));
  };
  ws.onclose = ev => { status.textContent = 'closed' + (ev.reason ? ': ' + ev.reason : ''); };
  const enc = new TextEncoder();
  term.onData(d => { if (ws.readyState === 1) ws.send(enc.encode(d)); });
  window.gumtreeTerminal = term;
  onLeave(() => { ws.close(); term.dispose(); });
}

// A chart of metric queries (GetMetricData) over the last `range`.
const RANGES = { hour: [3600, 60], day: [86400, 300], week: [7 * 86400, 3600] };
function metricChart(title, queries, range, unit) {
  const el = h('div', { class: 'chart panel', 'data-title': title }, h('h3', {}, title), h('div', { class: 'empty' }, 'Loading…'));
  const [span, period] = RANGES[range];
  const end = Math.floor(Date.now() / 1000);
  cw('GetMetricData', {
    StartTime: end - span, EndTime: end + 60, ScanBy: 'TimestampAscending',
    MetricDataQueries: queries.map((q, n) => ({ Id: 'm' + n, Label: q.label, ReturnData: true, MetricStat: { Metric: q.metric, Period: period, Stat: q.stat || 'Average' } })),
  }).then(r => {
    const results = r.MetricDataResults || [];
    const times = [...new Set(results.flatMap(x => x.Timestamps || []))].sort((a, b) => a - b);
    const points = results.reduce((n, x) => n + (x.Values || []).length, 0);
    el.dataset.points = points;
    if (!points) { el.querySelector('.empty').textContent = 'No datapoints in this range yet.'; return; }
    const data = [times].concat(results.map(x => {
      const m = new Map((x.Timestamps || []).map((t, k) => [t, x.Values[k]]));
      return times.map(t => (m.has(t) ? m.get(t) : null));
    }));
    el.querySelector('.empty').remove();
    const colours = ['#2f6f4f', '#b35c1e', '#3a62b3', '#8a3ab3'];
    const plot = new window.uPlot({
      width: Math.max(380, el.clientWidth - 28), height: 200,
      series: [{}].concat(results.map((x, k) => ({ label: x.Label || queries[k].label, stroke: colours[k % 4], width: 2, spanGaps: true, value: (u, v) => (v == null ? '–' : unit === 'bytes' ? bytes(v) : v.toFixed(1) + (unit || '')) }))),
      axes: [{}, { values: (u, vals) => vals.map(v => (unit === 'bytes' ? bytes(v) : v + (unit || ''))), size: 70 }],
      // The whole range asked for, so a few first points sit at its end.
      scales: { x: { time: true, range: () => [end - span, end] } },
    }, data, el);
    onLeave(() => plot.destroy());
  }).catch(e => { el.querySelector('.empty').replaceWith(errorBox(e)); });
  return el;
}

function monitoringTab(id, into) {
  let range = 'hour';
  const charts = h('div', { class: 'charts', id: 'charts' });
  const dim = [{ Name: 'InstanceId', Value: id }];
  const m = name => ({ Namespace: 'AWS/EC2', MetricName: name, Dimensions: dim });
  const draw = () => {
    charts.replaceChildren(
      metricChart('CPU utilization', [{ label: 'CPU %', metric: m('CPUUtilization') }], range, '%'),
      metricChart('Network', [{ label: 'in', metric: m('NetworkIn'), stat: 'Sum' }, { label: 'out', metric: m('NetworkOut'), stat: 'Sum' }], range, 'bytes'),
      metricChart('Disk', [{ label: 'read', metric: m('DiskReadBytes'), stat: 'Sum' }, { label: 'written', metric: m('DiskWriteBytes'), stat: 'Sum' }], range, 'bytes'));
  };
  const buttons = Object.keys(RANGES).map(r => h('button', { class: r === range ? '' : 'secondary', id: 'range-' + r, onclick: ev => { range = r; buttons.forEach(b => { b.className = b === ev.target ? '' : 'secondary'; }); draw(); } }, 'last ' + r));
  into.replaceChildren(h('div', { class: 'toolbar' }, buttons, h('button', { class: 'secondary', id: 'refresh-charts', onclick: draw }, 'Refresh')), charts);
  draw();
  const t = setInterval(draw, 15000);
  onLeave(() => clearInterval(t));
}

// ----- images -----
PAGES.images = async () => {
  const r = await ec2('DescribeImages', {});
  shell('Images', h('div', { class: 'panel' }, table([
    ['Image', i => i.imageId], ['Name', i => i.name || ''], ['Type', i => i.imageType], ['State', i => stateTag(i.imageState)],
    ['Owner', i => i.imageOwnerId], ['Public', i => i.isPublic], ['Location', i => i.imageLocation || ''],
    ['', i => h('button', { class: 'secondary', onclick: () => act('Deregistered ' + i.imageId, () => ec2('DeregisterImage', { ImageId: i.imageId })) }, 'Deregister')],
  ], list(r.imagesSet), { id: 'images', empty: 'No images: register one with euca-register or aws ec2 register-image.' })));
};

// ----- volumes and snapshots -----
PAGES.volumes = async () => {
  const [v, s, zones] = await Promise.all([ec2('DescribeVolumes', {}), ec2('DescribeSnapshots', { 'Owner.1': 'self' }), ec2('DescribeAvailabilityZones', {})]);
  const zoneNames = list(zones.availabilityZoneInfo).map(z => z.zoneName);
  const vols = list(v.volumeSet);
  shell('Volumes and snapshots', [
    h('div', { class: 'panel' },
      h('div', { class: 'toolbar' }, h('button', { id: 'create-volume', onclick: () => dialog('Create a volume', [
        { name: 'size', label: 'Size (GiB)', type: 'number', value: '1', min: '1' },
        { name: 'zone', label: 'Availability zone', type: 'select', options: zoneNames },
        { name: 'snapshot', label: 'From snapshot', type: 'select', options: [['', 'none']].concat(list(s.snapshotSet).map(x => x.snapshotId)) },
      ], async x => {
        const p = { AvailabilityZone: x.zone };
        if (x.snapshot) p.SnapshotId = x.snapshot; else p.Size = x.size;
        await ec2('CreateVolume', p); route();
      }, { ok: 'Create' }) }, 'Create volume')),
      table([
        ['Volume', x => x.volumeId], ['Size', x => x.size + ' GiB'], ['Zone', x => x.availabilityZone], ['State', x => stateTag(x.status)],
        ['Attached to', x => list(x.attachmentSet).map(a => a.instanceId + ' ' + a.device + ' (' + a.status + ')').join(', ')],
        ['Snapshot', x => x.snapshotId || ''],
        ['', x => [
          x.status === 'available' ? h('button', { class: 'secondary', onclick: () => attachVolume(x) }, 'Attach') : null,
          x.status === 'in-use' ? h('button', { class: 'secondary', onclick: () => act('Detaching ' + x.volumeId, () => ec2('DetachVolume', { VolumeId: x.volumeId })) }, 'Detach') : null,
          ' ', h('button', { class: 'secondary', onclick: () => act('Snapshot of ' + x.volumeId + ' started', () => ec2('CreateSnapshot', { VolumeId: x.volumeId })) }, 'Snapshot'),
          ' ', x.status === 'available' ? h('button', { class: 'danger', onclick: () => act('Deleted ' + x.volumeId, () => ec2('DeleteVolume', { VolumeId: x.volumeId })) }, 'Delete') : null,
        ]],
      ], vols, { id: 'volumes', empty: 'No volumes.' })),
    h('div', { class: 'panel' }, h('h3', {}, 'Snapshots'), table([
      ['Snapshot', x => x.snapshotId], ['Volume', x => x.volumeId], ['Size', x => x.volumeSize + ' GiB'], ['State', x => stateTag(x.status)],
      ['Progress', x => x.progress], ['Started', x => when(x.startTime)],
      ['', x => h('button', { class: 'danger', onclick: () => act('Deleted ' + x.snapshotId, () => ec2('DeleteSnapshot', { SnapshotId: x.snapshotId })) }, 'Delete')],
    ], list(s.snapshotSet), { id: 'snapshots', empty: 'No snapshots.' })),
  ]);
  if (vols.some(x => ['creating', 'deleting'].includes(x.status) || list(x.attachmentSet).some(a => a.status !== 'attached'))) every(3000, route);
};

async function attachVolume(vol) {
  const r = await ec2('DescribeInstances', filters([['instance-state-name', ['running', 'stopped']], ['availability-zone', [vol.availabilityZone]]]));
  const ids = list(r.reservationSet).flatMap(x => list(x.instancesSet)).map(i => i.instanceId);
  dialog('Attach ' + vol.volumeId, [
    { name: 'instance', label: 'Instance', type: 'select', options: ids },
    { name: 'device', label: 'Device', value: '/dev/vdb' },
  ], async x => { await ec2('AttachVolume', { VolumeId: vol.volumeId, InstanceId: x.instance, Device: x.device }); route(); }, { ok: 'Attach' });
}

// ----- key pairs -----
function saveFile(name, text) {
  const a = h('a', { href: URL.createObjectURL(new Blob([text], { type: 'application/x-pem-file' })), download: name });
  document.body.append(a); a.click(); a.remove();
}
PAGES.keypairs = async () => {
  const r = await ec2('DescribeKeyPairs', {});
  shell('Key pairs', h('div', { class: 'panel' },
    h('div', { class: 'toolbar' },
      h('button', { id: 'create-key-pair', onclick: () => dialog('Create a key pair', [{ name: 'name', label: 'Name' }], async x => {
        const k = await ec2('CreateKeyPair', { KeyName: x.name });
        dialog('Key pair ' + k.keyName, [], async () => { }, {
          ok: 'Done',
          extra: h('div', {}, h('p', {}, 'This is the only time the private key is shown. Save it now.'),
            h('button', { type: 'button', id: 'download-private-key', onclick: () => saveFile(k.keyName + '.pem', k.keyMaterial) }, 'Download ' + k.keyName + '.pem'),
            h('p', { class: 'muted mono' }, 'Fingerprint ' + k.keyFingerprint)),
        });
        route();
      }, { ok: 'Create' }) }, 'Create key pair'),
      h('button', { class: 'secondary', onclick: () => dialog('Import a public key', [{ name: 'name', label: 'Name' }, { name: 'key', label: 'Public key (OpenSSH)', type: 'textarea' }],
        async x => { await ec2('ImportKeyPair', { KeyName: x.name, PublicKeyMaterial: b64utf8(x.key) }); route(); }, { ok: 'Import' }) }, 'Import')),
    table([['Name', k => k.keyName], ['Fingerprint', k => h('span', { class: 'mono' }, k.keyFingerprint)], ['ID', k => k.keyPairId || ''],
      ['', k => h('button', { class: 'danger', onclick: () => act('Deleted ' + k.keyName, () => ec2('DeleteKeyPair', { KeyName: k.keyName })) }, 'Delete')]],
    list(r.keySet), { id: 'keypairs', empty: 'No key pairs.' })));
};

// ----- security groups -----
function ruleText(p) {
  const ports = p.ipProtocol === '-1' ? 'all' : (p.fromPort === p.toPort ? p.fromPort : p.fromPort + '–' + p.toPort);
  const from = list(p.ipRanges).map(x => x.cidrIp).concat(list(p.groups).map(g => g.groupName || g.groupId));
  return (p.ipProtocol === '-1' ? 'all traffic' : p.ipProtocol + ' ' + ports) + ' from ' + from.join(', ');
}
function ruleParams(groupId, p, into) {
  into = into || {};
  into.GroupId = groupId;
  into['IpPermissions.1.IpProtocol'] = p.ipProtocol;
  if (p.ipProtocol !== '-1') { into['IpPermissions.1.FromPort'] = p.fromPort; into['IpPermissions.1.ToPort'] = p.toPort; }
  list(p.ipRanges).forEach((x, i) => { into['IpPermissions.1.IpRanges.' + (i + 1) + '.CidrIp'] = x.cidrIp; });
  list(p.groups).forEach((g, i) => { into['IpPermissions.1.Groups.' + (i + 1) + '.GroupId'] = g.groupId; });
  return into;
}
PAGES.groups = async () => {
  const r = await ec2('DescribeSecurityGroups', {});
  const groups = list(r.securityGroupInfo);
  shell('Security groups', h('div', { class: 'panel' },
    h('div', { class: 'toolbar' }, h('button', { id: 'create-group', onclick: () => dialog('Create a security group', [{ name: 'name', label: 'Name' }, { name: 'description', label: 'Description' }],
      async x => { await ec2('CreateSecurityGroup', { GroupName: x.name, GroupDescription: x.description || x.name }); route(); }, { ok: 'Create' }) }, 'Create group')),
    table([
      ['Group', g => [h('strong', {}, g.groupName), h('div', { class: 'muted mono' }, g.groupId)]],
      ['Description', g => g.groupDescription],
      ['Inbound rules', g => h('div', {}, list(g.ipPermissions).map(p => h('div', {}, ruleText(p), ' ',
        h('button', { class: 'secondary', title: 'Remove this rule', onclick: () => act('Rule removed', () => ec2('RevokeSecurityGroupIngress', ruleParams(g.groupId, p)) ) }, '✕'))),
        h('button', { class: 'secondary', onclick: () => ruleEditor(g, groups) }, 'Add rule'))],
      ['', g => g.groupName === 'default' ? null : h('button', { class: 'danger', onclick: () => act('Deleted ' + g.groupName, () => ec2('DeleteSecurityGroup', { GroupId: g.groupId })) }, 'Delete')],
    ], groups, { id: 'groups' })));
};
function ruleEditor(g, groups) {
  dialog('Add an inbound rule to ' + g.groupName, [
    { name: 'protocol', label: 'Protocol', type: 'select', options: [['tcp', 'TCP'], ['udp', 'UDP'], ['icmp', 'ICMP'], ['-1', 'all']] },
    { name: 'from', label: 'From port (ICMP: type)', type: 'number', value: '22' },
    { name: 'to', label: 'To port (ICMP: code, -1 any)', type: 'number', value: '22' },
    { name: 'cidr', label: 'Source CIDR', value: '0.0.0.0/0', hint: 'Or leave empty and pick a group.' },
    { name: 'group', label: 'Source group', type: 'select', options: [['', 'none']].concat(groups.map(x => [x.groupId, x.groupName])) },
  ], async x => {
    const p = { ipProtocol: x.protocol, fromPort: x.from, toPort: x.to, ipRanges: x.cidr ? [{ cidrIp: x.cidr }] : [], groups: x.group ? [{ groupId: x.group }] : [] };
    await ec2('AuthorizeSecurityGroupIngress', ruleParams(g.groupId, p));
    route();
  }, { ok: 'Add rule' });
}

// ----- elastic IPs -----
PAGES.addresses = async () => {
  const r = await ec2('DescribeAddresses', {});
  shell('Elastic IPs', h('div', { class: 'panel' },
    h('div', { class: 'toolbar' }, h('button', { id: 'allocate', onclick: () => act('Address allocated', () => ec2('AllocateAddress', {})) }, 'Allocate address')),
    table([
      ['Address', a => a.publicIp], ['Allocation', a => a.allocationId || ''], ['Instance', a => a.instanceId || ''], ['Private IP', a => a.privateIpAddress || ''],
      ['', a => [
        a.instanceId ? h('button', { class: 'secondary', onclick: () => act('Disassociated ' + a.publicIp, () => ec2('DisassociateAddress', { PublicIp: a.publicIp })) }, 'Disassociate')
          : h('button', { class: 'secondary', onclick: () => associate(a) }, 'Associate'),
        ' ', h('button', { class: 'danger', onclick: () => act('Released ' + a.publicIp, () => ec2('ReleaseAddress', { PublicIp: a.publicIp })) }, 'Release')]],
    ], list(r.addressesSet), { id: 'addresses', empty: 'No elastic IPs.' })));
};
async function associate(a) {
  const r = await ec2('DescribeInstances', filters([['instance-state-name', ['running']]]));
  const ids = list(r.reservationSet).flatMap(x => list(x.instancesSet)).map(i => i.instanceId);
  dialog('Associate ' + a.publicIp, [{ name: 'instance', label: 'Instance', type: 'select', options: ids }],
    async x => { await ec2('AssociateAddress', { PublicIp: a.publicIp, InstanceId: x.instance }); route(); }, { ok: 'Associate' });
}

// ----- buckets and objects -----
PAGES.buckets = async (bucket, ...prefixParts) => {
  if (bucket) return bucketPage(bucket, prefixParts.join('/'));
  const r = await s3('GET');
  const buckets = list(r.Buckets && r.Buckets.Bucket);
  shell('Buckets', h('div', { class: 'panel' },
    h('div', { class: 'toolbar' }, h('button', { id: 'create-bucket', onclick: () => dialog('Create a bucket', [{ name: 'name', label: 'Name', hint: '3 to 63 lowercase letters, digits, dots and hyphens.' }],
      async x => { await s3('PUT', x.name); route(); }, { ok: 'Create' }) }, 'Create bucket')),
    table([
      ['Bucket', b => h('a', { href: '#/buckets/' + encodeURIComponent(b.Name) }, b.Name)], ['Created', b => when(b.CreationDate)],
      ['', b => h('button', { class: 'danger', onclick: () => act('Deleted ' + b.Name, () => s3('DELETE', b.Name)) }, 'Delete')],
    ], buckets, { id: 'buckets', empty: 'No buckets.' })));
};

function upload(bucket, key, file, bar, label) {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open('PUT', s3path(bucket, key));
    x.setRequestHeader('X-CSRF-Token', S.session.csrf);
    x.setRequestHeader('Content-Type', file.type || 'application/octet-stream');
    x.upload.onprogress = ev => {
      if (!ev.lengthComputable) return;
      const pct = Math.round((100 * ev.loaded) / ev.total);
      bar.style.width = pct + '%';
      bar.parentElement.dataset.percent = pct;
      label.textContent = bytes(ev.loaded) + ' of ' + bytes(ev.total) + ' (' + pct + ' %)';
    };
    x.onload = () => (x.status < 300 ? resolve() : reject(xmlError(x.responseText, x.status)));
    x.onerror = () => reject(new ApiError('NetworkError', 'The upload did not reach the console.'));
    x.send(file);
  });
}

async function bucketPage(bucket, prefix) {
  const q = { 'list-type': '2', delimiter: '/' };
  if (prefix) q.prefix = prefix + '/';
  const r = await s3('GET', bucket, undefined, q);
  const objects = list(r.Contents);
  const dirs = list(r.CommonPrefixes).map(p => p.Prefix);
  const bar = h('div');
  const progress = h('div', { class: 'progress', id: 'upload-progress', hidden: true }, bar);
  const label = h('span', { class: 'muted', id: 'upload-label' });
  const fileInput = h('input', { type: 'file', id: 'upload-file' });
  const presigned = h('div', { id: 'presigned' });
  shell('Bucket ' + bucket + (prefix ? ' / ' + prefix : ''), [
    h('div', { class: 'panel' },
      h('div', { class: 'toolbar' }, fileInput,
        h('button', { id: 'upload', onclick: async () => {
          const f = fileInput.files[0];
          if (!f) { toast('Pick a file first.', true); return; }
          progress.hidden = false;
          try {
            await upload(bucket, (prefix ? prefix + '/' : '') + f.name, f, bar, label);
            label.textContent = 'Uploaded ' + f.name + ' (' + bytes(f.size) + ')';
            toast('Uploaded ' + f.name);
            setTimeout(route, 600);
          } catch (e) { label.textContent = String(e); toast(String(e), true); }
        } }, 'Upload'),
        h('span', { class: 'grow' }), h('a', { href: '#/buckets' }, 'All buckets')),
      progress, label, presigned),
    h('div', { class: 'panel' }, table([
      ['Key', o => o.dir ? h('a', { href: '#/buckets/' + encodeURIComponent(bucket) + '/' + o.dir.replace(/\/$/, '').split('/').map(encodeURIComponent).join('/') }, o.dir) : o.Key],
      ['Size', o => (o.dir ? '' : bytes(o.Size))], ['Modified', o => (o.dir ? '' : when(o.LastModified))], ['ETag', o => h('span', { class: 'mono' }, o.ETag || '')],
      ['', o => o.dir ? null : [
        h('a', { class: 'button secondary', href: s3path(bucket, o.Key) + '?download=1', download: o.Key.split('/').pop() }, 'Download'), ' ',
        h('button', { class: 'secondary', onclick: async () => {
          try {
            const p = await api('/api/s3-presign', { method: 'POST', json: { bucket, key: o.Key, expires: 3600 } });
            presigned.replaceChildren(h('p', {}, 'A link anyone can fetch for an hour: '), h('textarea', { readonly: true, id: 'presigned-url' }, p.url));
          } catch (e) { toast(String(e), true); }
        } }, 'Link'), ' ',
        h('button', { class: 'danger', onclick: () => act('Deleted ' + o.Key, () => s3('DELETE', bucket, o.Key)) }, 'Delete')]],
    ], dirs.map(d => ({ dir: d })).concat(objects), { id: 'objects', empty: 'No objects.' })),
  ]);
}

// ----- the user's own access keys and password -----
PAGES.keys = async () => {
  const me = S.session.user;
  const r = await ec2('ListAccessKeys', { UserName: me });
  const keys = list(r.ListAccessKeysResult && r.ListAccessKeysResult.AccessKeyMetadata);
  const shown = h('div', { id: 'new-key' });
  shell('Access keys of ' + me, [
    h('div', { class: 'panel' },
      h('div', { class: 'toolbar' },
        h('button', { id: 'create-access-key', onclick: async () => {
          try {
            const k = (await ec2('CreateAccessKey', { UserName: me })).CreateAccessKeyResult.AccessKey;
            shown.replaceChildren(h('div', { class: 'panel' }, h('p', {}, 'The secret is shown only now:'),
              h('dl', { class: 'facts' }, h('dt', {}, 'Access key ID'), h('dd', { class: 'mono' }, k.AccessKeyId), h('dt', {}, 'Secret access key'), h('dd', { class: 'mono' }, k.SecretAccessKey))));
          } catch (e) { toast(String(e), true); }
        } }, 'Create access key'),
        h('button', { class: 'secondary', id: 'change-password', onclick: () => dialog('Set your console password', [{ name: 'password', label: 'New password', type: 'password', hint: '8 to 128 characters.' }],
          async x => {
            try { await ec2('UpdateLoginProfile', { UserName: me, Password: x.password }); } catch (e) {
              if (e.code !== 'NoSuchEntity') throw e;
              await ec2('CreateLoginProfile', { UserName: me, Password: x.password });
            }
            toast('Password set: sign in again with it.');
          }, { ok: 'Set password' }) }, 'Set password')),
      shown,
      table([['Access key ID', k => h('span', { class: 'mono' }, k.AccessKeyId)], ['Status', k => k.Status], ['Created', k => when(k.CreateDate)],
        ['', k => h('button', { class: 'danger', onclick: () => act('Deleted ' + k.AccessKeyId, () => ec2('DeleteAccessKey', { UserName: me, AccessKeyId: k.AccessKeyId })) }, 'Delete')]],
      keys, { id: 'access-keys', empty: 'No access keys.' })),
  ]);
};

// ---------- administrators ----------
function capacity(used, total, unit) {
  const pct = total ? Math.round((100 * used) / total) : 0;
  return h('div', { title: used + ' of ' + total + ' ' + unit + ' in use' },
    h('div', { class: 'bar' + (pct > 85 ? ' high' : '') }, h('div', { style: 'width:' + pct + '%' })),
    h('span', { class: 'muted' }, used + ' / ' + total + ' ' + unit));
}

PAGES['admin-nodes'] = async () => {
  const draw = async () => {
    const o = await api('/api/admin/overview');
    return [
      h('div', { class: 'panel' }, h('h3', {}, 'Services'), table([
        ['Type', s => s.type], ['Name', s => s.name], ['Partition', s => s.partition], ['State', s => stateTag(s.state)],
        ['Endpoint', s => s.endpoint], ['Last report', s => when(s.lastReport)], ['Detail', s => s.detail],
      ], o.services, { id: 'services' })),
      h('div', { class: 'panel' }, h('h3', {}, 'Nodes'), table([
        ['Node', n => h('strong', {}, n.name)], ['Cluster', n => n.cluster + ' (' + n.zone + ')'],
        ['State', n => [stateTag(n.state), n.disabled ? h('div', { class: 'muted' }, 'disabled') : null]],
        ['Cores', n => capacity(n.cores[0], n.cores[1], '')], ['Memory', n => capacity(n.memoryMib[0], n.memoryMib[1], 'MiB')],
        ['Disk', n => capacity(n.diskGib[0], n.diskGib[1], 'GiB')], ['Virtualization', n => [n.hypervisor, h('div', { class: 'muted' }, n.virtReason)]],
        ['Instances', n => n.instances.length],
        ['', n => n.disabled ? h('button', { class: 'secondary', onclick: () => act('Enabled ' + n.name, () => api('/api/admin/enable-node', { method: 'POST', json: { node: n.name } })) }, 'Enable')
          : h('button', { class: 'secondary', onclick: () => { if (confirm('Move every instance off ' + n.name + '?')) act('Evacuated ' + n.name, () => api('/api/admin/evacuate', { method: 'POST', json: { node: n.name } })); } }, 'Evacuate')],
      ], o.nodes, { id: 'nodes', key: n => n.name })),
    ];
  };
  const main = shell('Services and nodes', await draw());
  every(5000, async () => { try { const kids = await draw(); main.replaceChildren(main.firstChild, ...kids); } catch (e) { /* next time */ } });
};

PAGES['admin-monitor'] = async () => {
  const [m, o] = await Promise.all([api('/api/admin/node-metrics?minutes=60'), api('/api/admin/overview')]);
  let range = 'hour';
  const charts = h('div', { class: 'charts', id: 'node-charts' });
  const dims = n => [{ Name: 'Cluster', Value: n.cluster }, { Name: 'NodeName', Value: n.node }];
  const metric = (n, name) => ({ Namespace: 'Gumtree/Node', MetricName: name, Dimensions: dims(n) });
  const draw = () => charts.replaceChildren(
    metricChart('CPU of every node', m.nodes.map(n => ({ label: n.node, metric: metric(n, 'CPUUtilization') })), range, '%'),
    metricChart('Memory of every node', m.nodes.map(n => ({ label: n.node, metric: metric(n, 'MemoryUtilization') })), range, '%'),
    metricChart('Disk of every node', m.nodes.map(n => ({ label: n.node, metric: metric(n, 'DiskUtilization') })), range, '%'),
    metricChart('Instances on every node', m.nodes.map(n => ({ label: n.node, metric: metric(n, 'Instances'), stat: 'Maximum' })), range, ''));
  const byNode = Object.fromEntries(o.nodes.map(n => [n.name, n.instances]));
  shell('Resource monitor', [
    h('div', { class: 'panel' }, table([
      ['Node', n => h('strong', {}, n.node)], ['State', n => stateTag(n.state)], ['CPU now', n => n.cpu.toFixed(1) + ' %'],
      ['CPU last hour', n => 'avg ' + n.cpuAverage.toFixed(1) + ' %, peak ' + n.cpuMaximum.toFixed(1) + ' %'],
      ['Memory', n => n.memory.toFixed(1) + ' %'], ['Disk', n => n.disk.toFixed(1) + ' %'],
      ['Guests busy', n => n.guestsBusyCores.toFixed(2) + ' of ' + n.cores + ' cores'],
      ['Instances', n => (byNode[n.node] || []).map(id => h('div', { class: 'mono' }, id))],
    ], m.nodes, { id: 'node-metrics' })),
    h('div', { class: 'toolbar' }, Object.keys(RANGES).map(r => h('button', { class: r === range ? '' : 'secondary', onclick: ev => { range = r; ev.target.parentElement.querySelectorAll('button').forEach(b => { b.className = b === ev.target ? '' : 'secondary'; }); draw(); } }, 'last ' + r))),
    charts,
  ]);
  draw();
  every(30000, draw);
};

PAGES['admin-accounts'] = async () => {
  const r = await api('/api/admin/accounts');
  const q = x => (x === null || x === undefined ? '∞' : x);
  const post = (path, json) => api(path, { method: 'POST', json });
  shell('Accounts', h('div', { class: 'panel' },
    h('div', { class: 'toolbar' }, h('button', { id: 'create-account', onclick: () => dialog('Create an account', [{ name: 'account', label: 'Name' }],
      async x => { await post('/api/admin/accounts', { account: x.account }); route(); }, { ok: 'Create' }) }, 'Create account')),
    table([
      ['Account', a => [h('strong', {}, a.name), h('div', { class: 'muted mono' }, a.accountId)]],
      ['Quota', a => h('div', { class: 'quota' }, 'instances ' + q(a.quota.instances) + ', cores ' + q(a.quota.cores) + ', memory ' + q(a.quota.memoryMib) + ' MiB, volumes ' + q(a.quota.volumes) + ', ' + q(a.quota.volumeGib) + ' GiB')],
      ['Access keys', a => a.keys.map(k => h('div', { class: 'mono' }, k.accessKeyId + ' (' + k.user + ')'))],
      ['', a => [
        h('button', { class: 'secondary', 'data-account': a.name, 'data-action': 'quota', onclick: () => dialog('Quota of ' + a.name, [
          ['instances', 'Instances'], ['cores', 'Cores'], ['memoryMib', 'Memory (MiB)'], ['volumes', 'Volumes'], ['volumeGib', 'Volume GiB']]
          .map(([n, l]) => ({ name: n, label: l, type: 'number', value: a.quota[n] === null ? '' : String(a.quota[n]), hint: 'Empty: no limit.' })),
        async x => {
          const body = { account: a.name };
          for (const [k, v] of Object.entries(x)) body[k] = v === '' ? null : Number(v);
          await post('/api/admin/quota', body); route();
        }, { ok: 'Set quota' }) }, 'Quota'), ' ',
        h('button', { class: 'secondary', onclick: () => dialog('Password of a user of ' + a.name, [{ name: 'user', label: 'User', value: 'admin' }, { name: 'password', label: 'Password', type: 'password', hint: '8 to 128 characters; empty removes it.' }],
          async x => { await post('/api/admin/password', { account: a.name, user: x.user, password: x.password }); toast('Password set for ' + x.user + '@' + a.name); }, { ok: 'Set password' }) }, 'Password'), ' ',
        h('button', { class: 'secondary', onclick: () => dialog('Access key for a user of ' + a.name, [{ name: 'user', label: 'User', value: 'admin' }],
          async (x, form) => {
            const k = await post('/api/admin/keys', { account: a.name, user: x.user });
            form.querySelector('.actions').before(h('dl', { class: 'facts' }, h('dt', {}, 'Access key ID'), h('dd', { class: 'mono' }, k.accessKeyId), h('dt', {}, 'Secret'), h('dd', { class: 'mono' }, k.secretAccessKey)));
            return true;
          }, { ok: 'Create key' }) }, 'New key')]],
    ], r.accounts, { id: 'accounts', key: a => a.name })));
};

PAGES['admin-instances'] = async () => {
  const [r, o] = await Promise.all([api('/api/admin/instances'), api('/api/admin/overview')]);
  const nodes = o.nodes.map(n => n.name);
  shell('All instances', h('div', { class: 'panel' }, table([
    ['Instance', i => h('span', { class: 'mono' }, i.instanceId)], ['Account', i => i.account], ['State', i => [stateTag(i.state), h('div', { class: 'muted' }, i.detail)]],
    ['Type', i => i.type], ['Node', i => i.node + (i.virt ? ' (' + i.virt + ')' : '')], ['Private IP', i => i.privateIp], ['Launched', i => when(i.launched)],
    ['', i => i.state === 'running' ? h('button', { class: 'secondary', onclick: () => dialog('Migrate ' + i.instanceId, [
      { name: 'destination', label: 'To node', type: 'select', options: [['', 'the cluster\'s choice']].concat(nodes.filter(n => n !== i.node)) }],
    async x => {
      const m = await api('/api/admin/migrate', { method: 'POST', json: { instanceId: i.instanceId, destination: x.destination } });
      const done = m.migrations[0];
      if (done && !done.ok) throw new ApiError('MigrationFailed', done.error);
      toast('Migrated ' + i.instanceId + ' to ' + (done ? done.to : '?') + ' in ' + (done ? done.seconds.toFixed(1) : '?') + ' s');
      route();
    }, { ok: 'Migrate' }) }, 'Migrate') : null],
  ], r.instances, { id: 'all-instances', key: i => i.instanceId })));
};

PAGES['admin-events'] = async () => {
  const r = await api('/api/admin/events?limit=200');
  shell('Events', h('div', { class: 'panel' }, table([
    ['When', e => when(e.time)], ['Kind', e => e.kind], ['Node', e => e.node], ['Instance', e => e.instanceId], ['What', e => e.message],
  ], r.events, { id: 'events', empty: 'No events yet.' })));
};

// ---------- start ----------
window.addEventListener('hashchange', route);
(async () => {
  try {
    S.session = await api('/api/session');
    route();
  } catch (e) {
    signInPage();
  }
})();
