#!/usr/bin/env node
// MQTT.js client for the interoperability suite (driven by ../test_mqttjs.py).
//
//   node client.mjs pub --url URL --topic T [--topic T2 ...] [--qos Q[,Q2...]] [--count N]
//                       [--payload TEXT | --payload-hex HEX] [--retain]
//   node client.mjs sub --url URL --topic T [--topic T2 ...] [--qos Q[,Q2...]] [--count N]
//
// The URL's scheme picks the transport: mqtt:// (TCP), mqtts:// (TLS), ws://, wss:// (the path is
// the WebSocket path, e.g. ws://127.0.0.1:8080/mqtt).
//
// pub: publishes --count messages (default: as many as topics or QoS values given) one after the
//      other, each once the previous one is acknowledged; message i goes to the i-th topic and at
//      the i-th QoS, both lists taken round. The payload is --payload / --payload-hex, else
//      "mqttjs-<i>".
// sub: subscribes to every topic in one SUBSCRIBE (topic j at the j-th QoS: give one QoS, or one
//      per topic) and exits once --count messages (default 1) arrived and were acknowledged.
//
// Other options: --version 4|5 (MQTT 3.1.1 or 5.0; default 4), --client-id ID, --ca FILE (the CA to
// trust for wss:// and mqtts://; the server certificate is always verified), --timeout SECONDS
// (default 10: a bound on the whole run, every wait included).
//
// Output on stdout, one JSON object a line:
//   {"event":"connected","session_present":false}
//   {"event":"subscribed","granted":[1]}                                   (sub)
//   {"event":"published","index":0,"topic":"t","qos":1}                    (pub, once acknowledged)
//   {"event":"message","topic":"t","qos":1,"retain":false,"payload_hex":"00ff"}   (sub)
//   {"event":"done"}
// Exit status: 0 when done; 2 on an error (bad arguments, connection refused or closed, a refused
// CONNACK / SUBACK / PUBACK); 3 when --timeout passes first. The reason goes to stderr as one line
// starting "mqttjs-client: ".

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import mqtt from 'mqtt';

const EXIT_ERROR = 2;
const EXIT_TIMEOUT = 3;

let finished = false;
let client = null;

function emit(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

function finish(code, message) {
  if (finished) return;
  finished = true;
  if (message) process.stderr.write(`mqttjs-client: ${message}\n`);
  if (client !== null) {
    // No waiting on the broker here: force the socket closed and leave.
    try {
      client.end(true);
    } catch {
      // The process exits anyway.
    }
  }
  process.exit(code);
}

function fail(message) {
  finish(EXIT_ERROR, `error: ${message}`);
}

function parseIntArg(name, value, min, max) {
  if (!/^[0-9]+$/.test(value)) fail(`--${name} must be an integer, not ${JSON.stringify(value)}`);
  const n = Number(value);
  if (n < min || n > max) fail(`--${name} must be between ${min} and ${max}, not ${n}`);
  return n;
}

let parsed;
try {
  parsed = parseArgs({
    allowPositionals: true,
    options: {
      url: { type: 'string' },
      topic: { type: 'string', multiple: true },
      qos: { type: 'string', default: '0' },
      version: { type: 'string', default: '4' },
      count: { type: 'string' },
      payload: { type: 'string' },
      'payload-hex': { type: 'string' },
      retain: { type: 'boolean', default: false },
      ca: { type: 'string' },
      'client-id': { type: 'string' },
      timeout: { type: 'string', default: '10' },
    },
  });
} catch (e) {
  fail(`bad arguments: ${e.message}`);
}

const { values: opt, positionals } = parsed;
const mode = positionals[0];
if (positionals.length !== 1 || (mode !== 'pub' && mode !== 'sub')) {
  fail('usage: client.mjs pub|sub --url URL --topic TOPIC [options] (see the header of client.mjs)');
}
if (!opt.url) fail('--url is required');
const topics = opt.topic ?? [];
if (topics.length === 0) fail('--topic is required');
if (topics.some((t) => t.length === 0)) fail('--topic must not be empty');
if (mode === 'sub' && new Set(topics).size !== topics.length) fail('sub: a --topic is given twice');
const qosList = opt.qos.split(',').map((q) => parseIntArg('qos', q, 0, 2));
if (mode === 'sub' && qosList.length !== 1 && qosList.length !== topics.length) {
  fail(`sub: give one --qos, or one per topic (${topics.length}), not ${qosList.length}`);
}
const version = parseIntArg('version', opt.version, 4, 5);
const defaultCount = mode === 'pub' ? Math.max(topics.length, qosList.length) : 1;
const count = opt.count === undefined ? defaultCount : parseIntArg('count', opt.count, 1, 100000);
const timeoutS = parseIntArg('timeout', opt.timeout, 1, 600);
if (opt.payload !== undefined && opt['payload-hex'] !== undefined) {
  fail('give --payload or --payload-hex, not both');
}
let payload = null;
if (opt['payload-hex'] !== undefined) {
  const hex = opt['payload-hex'];
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) {
    fail('--payload-hex must be hex digits in pairs');
  }
  payload = Buffer.from(hex, 'hex');
} else if (opt.payload !== undefined) {
  payload = Buffer.from(opt.payload, 'utf8');
}

let ca;
if (opt.ca !== undefined) {
  try {
    ca = readFileSync(opt.ca);
  } catch (e) {
    fail(`cannot read the CA file ${opt.ca}: ${e.message}`);
  }
}

// What the client is waiting for, for the error and timeout messages.
let phase = `waiting for CONNACK from ${opt.url}`;
setTimeout(() => {
  finish(EXIT_TIMEOUT, `timeout: not finished within ${timeoutS}s (${phase})`);
}, timeoutS * 1000);

// The last error of the underlying stream: MQTT.js drops stream errors that carry no `code` (an
// HTTP status in answer to the WebSocket upgrade, say) and reports only the close.
let streamError = null;
let closing = false;

const options = {
  protocolVersion: version,
  clean: true,
  reconnectPeriod: 0, // never reconnect: a dropped connection is an error here
  connectTimeout: timeoutS * 1000,
  keepalive: 30,
  resubscribe: false,
  rejectUnauthorized: true,
};
if (opt['client-id'] !== undefined) options.clientId = opt['client-id'];
if (ca !== undefined) options.ca = ca;

try {
  client = mqtt.connect(opt.url, options);
} catch (e) {
  fail(`cannot connect to ${opt.url}: ${e.message}`);
}
if (client.stream && typeof client.stream.on === 'function') {
  client.stream.on('error', (e) => {
    streamError = e;
  });
}

client.on('error', (e) => {
  const code = e.code !== undefined ? ` (code ${e.code})` : '';
  fail(`${phase}: ${e.message}${code}`);
});

client.on('close', () => {
  if (finished || closing) return;
  const why = streamError ? `: ${streamError.message}` : '';
  fail(`${phase}: the connection to ${opt.url} closed${why}`);
});

client.on('disconnect', (packet) => {
  fail(`${phase}: the server sent DISCONNECT (reason code ${packet.reasonCode ?? 'none'})`);
});

function done() {
  phase = 'disconnecting';
  closing = true;
  emit({ event: 'done' });
  // A clean DISCONNECT, bounded by the overall timer.
  client.end(false, {}, () => finish(0));
}

// ---- pub ----

function publishFrom(index) {
  if (index >= count) {
    done();
    return;
  }
  const topic = topics[index % topics.length];
  const qos = qosList[index % qosList.length];
  const body = payload !== null ? payload : Buffer.from(`mqttjs-${index}`, 'utf8');
  phase = `waiting for the acknowledgement of message ${index + 1} of ${count} (QoS ${qos} to ${topic})`;
  client.publish(topic, body, { qos, retain: opt.retain }, (err) => {
    if (err) {
      fail(`publish ${index + 1} of ${count} to ${topic}: ${err.message}`);
      return;
    }
    emit({ event: 'published', index, topic, qos });
    publishFrom(index + 1);
  });
}

// ---- sub ----

let received = 0;
// Received QoS 1 / QoS 2 messages whose PUBACK / PUBCOMP has not been sent yet: the subscriber
// disconnects only once they are all answered, so that no acknowledgement is left to write after
// the DISCONNECT.
const unanswered = new Set();

function maybeDone() {
  if (mode === 'sub' && !closing && received >= count && unanswered.size === 0) {
    // `packetsend` comes just before the packet is written: disconnect on the next turn, after it.
    closing = true;
    setImmediate(done);
  }
}

client.on('packetreceive', (packet) => {
  if (packet.cmd === 'publish' && packet.qos > 0) unanswered.add(packet.messageId);
});

client.on('packetsend', (packet) => {
  if (packet.cmd === 'puback' || packet.cmd === 'pubcomp') {
    unanswered.delete(packet.messageId);
    maybeDone();
  }
});

client.on('message', (topic, message, packet) => {
  if (mode !== 'sub' || finished) return;
  emit({
    event: 'message',
    topic,
    qos: packet.qos,
    retain: Boolean(packet.retain),
    payload_hex: Buffer.from(message).toString('hex'),
  });
  received += 1;
  phase =
    received < count
      ? `waiting for message ${received + 1} of ${count}`
      : 'acknowledging the messages received';
  maybeDone();
});

client.once('connect', (connack) => {
  emit({ event: 'connected', session_present: Boolean(connack.sessionPresent) });
  if (mode === 'pub') {
    publishFrom(0);
    return;
  }
  const filters = {};
  topics.forEach((t, j) => {
    filters[t] = { qos: qosList.length === 1 ? qosList[0] : qosList[j] };
  });
  phase = `waiting for the SUBACK for ${topics.join(', ')}`;
  client.subscribe(filters, (err, granted) => {
    if (err) {
      fail(`subscribe to ${topics.join(', ')}: ${err.message}`);
      return;
    }
    const codes = (granted ?? []).map((g) => g.qos);
    if (codes.length !== topics.length || codes.some((c) => c >= 0x80)) {
      fail(`subscription to ${topics.join(', ')} refused: SUBACK ${JSON.stringify(codes)}`);
      return;
    }
    emit({ event: 'subscribed', granted: codes });
    phase = `waiting for message 1 of ${count}`;
  });
});
