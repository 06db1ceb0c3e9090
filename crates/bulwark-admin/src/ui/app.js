// Bulwark's dashboard: plain DOM code over the admin API. Every value from the broker is put
// into the page as text (never as HTML), and every change carries the session's CSRF token.
'use strict';

const state = { csrf: '', role: 'viewer', last: null, timer: null, stream: null };
const MAX_EVENT_ROWS = 200;
const $ = (id) => document.getElementById(id);

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') headers['X-CSRF-Token'] = state.csrf;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401 && path !== '/ui/login') {
    showLogin();
    throw new Error('logged out');
  }
  return response;
}

async function failure(response) {
  try {
    const error = await response.json();
    return error.message || response.statusText;
  } catch (_) {
    return response.statusText;
  }
}

function cell(row, text, className) {
  const td = document.createElement('td');
  td.textContent = text === null || text === undefined ? '' : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function button(label, onClick) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = label;
  b.className = 'operator';
  b.addEventListener('click', onClick);
  return b;
}

function say(text, ok) {
  $('message').textContent = text || '';
  $('message').className = ok ? 'note' : 'error';
}

function showLogin() {
  clearInterval(state.timer);
  if (state.stream) state.stream.close();
  state.stream = null;
  $('app-view').hidden = true;
  $('who').hidden = true;
  $('logout').hidden = true;
  $('login-view').hidden = false;
}

function showApp(session) {
  state.csrf = session.csrf;
  state.role = session.role;
  document.body.className = session.role;
  $('who').textContent = `${session.user} (${session.role})`;
  $('who').hidden = false;
  $('logout').hidden = false;
  $('login-view').hidden = true;
  $('app-view').hidden = false;
  refresh();
  clearInterval(state.timer);
  state.timer = setInterval(refresh, 3000);
  startEvents();
}

async function refresh() {
  try {
    await Promise.all([overview(), clients(), bans()]);
  } catch (error) {
    if (error.message !== 'logged out') say(error.message);
  }
}

// Sums of the samples of `name` in Prometheus text whose labels contain `match`.
function metric(text, name, match) {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== ' ' && rest[0] !== '{') continue;
    if (match && !rest.includes(match)) continue;
    sum += Number(line.slice(line.lastIndexOf(' ') + 1)) || 0;
  }
  return sum;
}

async function overview() {
  const ready = await api('GET', '/api/v1/ready');
  const r = await ready.json();
  $('connected').textContent = r.connected;
  $('sessions').textContent = r.sessions;
  $('engine').textContent = r.ready ? 'serving' : 'not answering';
  const text = await (await api('GET', '/metrics')).text();
  const now = Date.now();
  const received = metric(text, 'bulwark_messages_total', 'direction="received"');
  const sent = metric(text, 'bulwark_messages_total', 'direction="sent"');
  if (state.last) {
    const seconds = (now - state.last.at) / 1000;
    $('rate-in').textContent = Math.max(0, Math.round((received - state.last.received) / seconds));
    $('rate-out').textContent = Math.max(0, Math.round((sent - state.last.sent) / seconds));
  }
  state.last = { at: now, received, sent };
  $('failed-logins').textContent = metric(text, 'bulwark_security_events_total', 'kind="auth_failure"');
  $('detections').textContent = metric(text, 'bulwark_security_events_total', 'kind="detection"');
  $('denials').textContent = metric(text, 'bulwark_acl_denials_total');
  $('bans-active').textContent = metric(text, 'bulwark_bans_active');
}

async function clients() {
  const prefix = $('client-filter').value;
  const query = prefix ? `?limit=100&client_id=${encodeURIComponent(prefix)}` : '?limit=100';
  const page = await (await api('GET', `/api/v1/clients${query}`)).json();
  const rows = $('client-rows');
  rows.replaceChildren();
  for (const client of page.items) {
    const row = document.createElement('tr');
    row.dataset.clientId = client.client_id;
    cell(row, client.client_id, 'mono');
    cell(row, client.username ?? '(anonymous)');
    cell(row, client.listener);
    cell(row, client.address, 'mono');
    const actions = cell(row, '');
    actions.appendChild(button('Details', () => detail(client.client_id)));
    actions.appendChild(button('Kick', () => kick(client.client_id)));
    rows.appendChild(row);
  }
}

async function detail(id) {
  const response = await api('GET', `/api/v1/clients/${encodeURIComponent(id)}`);
  if (!response.ok) {
    $('client-detail').textContent = await failure(response);
    return;
  }
  const d = await response.json();
  const subscriptions = d.subscriptions.map((s) => `${s.filter} (QoS ${s.qos})`).join(', ') || 'none';
  $('client-detail').textContent =
    `${d.client_id}: MQTT ${d.protocol}, ${d.queued_messages} queued (${d.queued_bytes} bytes), ` +
    `${d.inflight} in flight, session expiry ${d.session_expiry_interval} s; subscriptions: ${subscriptions}`;
}

async function kick(id) {
  const response = await api('POST', `/api/v1/clients/${encodeURIComponent(id)}/kick`, { reason_code: 152 });
  say(response.ok ? `${id} disconnected` : await failure(response), response.ok);
  refresh();
}

function targetText(ban) {
  if (ban.address) return `address ${ban.address}`;
  if (ban.username !== undefined && ban.client_id !== undefined) {
    return `client id ${ban.client_id} of ${ban.username || 'anonymous clients'}`;
  }
  if (ban.username !== undefined) return `user ${ban.username}`;
  return `client id ${ban.client_id}`;
}

function targetQuery(ban) {
  const query = new URLSearchParams();
  for (const key of ['address', 'username', 'client_id']) {
    if (ban[key] !== undefined) query.set(key, ban[key]);
  }
  return query.toString();
}

async function bans() {
  const list = await (await api('GET', '/api/v1/bans')).json();
  const rows = $('ban-rows');
  rows.replaceChildren();
  for (const ban of list) {
    const row = document.createElement('tr');
    cell(row, targetText(ban), 'mono');
    cell(row, ban.expires ? new Date(ban.expires * 1000).toISOString() : 'lifted by hand');
    cell(row, ban.reason);
    cell(row, ban.by);
    cell(row, '').appendChild(button('Lift', async () => {
      const response = await api('DELETE', `/api/v1/bans?${targetQuery(ban)}`);
      say(response.ok ? `ban on ${targetText(ban)} lifted` : await failure(response), response.ok);
      refresh();
    }));
    rows.appendChild(row);
  }
}

function eventRow(event) {
  const row = document.createElement('tr');
  row.dataset.kind = event.kind;
  if (!['auth_success', 'reauth_success', 'admin_action', 'config_reload'].includes(event.kind)) {
    row.className = 'refusal';
  }
  cell(row, event.time, 'mono');
  cell(row, event.kind);
  cell(row, event.actor || [event.username, event.client_id].filter(Boolean).join(' / '));
  cell(row, event.remote || '', 'mono');
  cell(row, [event.action, event.target, event.topic, event.reason].filter(Boolean).join(' · '));
  return row;
}

function addEvent(event) {
  const rows = $('event-rows');
  rows.insertBefore(eventRow(event), rows.firstChild);
  while (rows.children.length > MAX_EVENT_ROWS) rows.removeChild(rows.lastChild);
}

async function startEvents() {
  const recent = await (await api('GET', '/api/v1/events?limit=50')).json();
  $('event-rows').replaceChildren();
  for (const event of recent) addEvent(event);
  if (state.stream) state.stream.close();
  const stream = new EventSource('/api/v1/events/stream');
  stream.addEventListener('open', () => { $('stream-state').textContent = '(live)'; });
  stream.addEventListener('error', () => { $('stream-state').textContent = '(reconnecting)'; });
  stream.addEventListener('security', (message) => addEvent(JSON.parse(message.data)));
  stream.addEventListener('lagged', (message) => say(`${message.data} events not shown (too many at once)`));
  state.stream = stream;
}

async function start() {
  $('login-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    $('login-error').textContent = '';
    const response = await api('POST', '/ui/login', {
      username: $('username').value,
      password: $('password').value,
    });
    $('password').value = '';
    if (!response.ok) {
      $('login-error').textContent = await failure(response);
      return;
    }
    showApp(await response.json());
  });
  $('logout').addEventListener('click', async () => {
    await api('POST', '/ui/logout');
    showLogin();
  });
  $('client-filter').addEventListener('input', () => clients().catch(() => {}));
  $('ban-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const ban = { [$('ban-kind').value]: $('ban-target').value, reason: $('ban-reason').value };
    if ($('ban-seconds').value) ban.duration_seconds = Number($('ban-seconds').value);
    const response = await api('POST', '/api/v1/bans', ban);
    say(response.ok ? `banned ${targetText(ban)}` : await failure(response), response.ok);
    if (response.ok) $('ban-target').value = '';
    refresh();
  });
  const response = await fetch('/api/v1/session', { credentials: 'same-origin' });
  if (response.ok) showApp(await response.json());
  else showLogin();
}

document.addEventListener('DOMContentLoaded', start);
