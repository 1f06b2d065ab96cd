#!/usr/bin/env node
// Benchmark driver for the npm package `pg-transactional-outbox` (a peer of
// our Rust outbox pipeline). One process plays every role:
//   producer  -> package's initializeMessageStorage() inside a DB transaction
//   listener  -> package's polling or logical-replication listener; its
//                handler publishes to RabbitMQ with publisher confirms
//   consumer  -> separate AMQP connection that timestamps every arrival
// Result: ONE JSON object on stdout; everything else goes to stderr.
//
// Usage:
//   node run.mjs --pg postgres://root@127.0.0.1:5432/peer_x --amqp amqp://guest:guest@127.0.0.1:5672 \
//                --mode polling|logical --scenario steady --rate 100 --seconds 30 --prefix peer_abc
//   node run.mjs ... --scenario drain --rows 20000
// Every flag may also be given as env var PEER_<FLAG> (e.g. PEER_PG, PEER_MODE).

import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { createRequire } from 'node:module';
import os from 'node:os';
import pg from 'pg';
import amqp from 'amqplib';
import {
  DatabaseSetup,
  initializeMessageStorage,
  initializePollingMessageListener,
  initializeReplicationMessageListener,
} from 'pg-transactional-outbox';

const PKG_VERSION = createRequire(import.meta.url)('pg-transactional-outbox/package.json').version;

// ---------- arguments ----------
const DEFAULTS = {
  pg: undefined, amqp: 'amqp://guest:guest@127.0.0.1:5672', mode: undefined, scenario: undefined,
  rate: 100, seconds: 30, rows: 20000, prefix: undefined,
  grace: 30,            // s to wait after the last write before counting a row as lost
  drainTimeout: 900,    // s max for a drain run
  dupWait: 3,           // s to keep listening after everything arrived, to catch late duplicates
  lateWait: 120,        // steady: s to keep waiting after the grace period, to tell "slow" from "really lost"
  // Package settings; undefined = use the package's own default (see FINDINGS.md)
  batch: undefined, interval: undefined, lock: undefined,
  concurrency: undefined, // message.concurrency: 'sequential' (package default) or 'parallel'
  notfoundRetry: 0,     // opt-in workaround (see FINDINGS.md): retry the package's row-lock SELECT N times if it sees no row
  payloadBytes: 600, logLevel: 'info',
};
const opts = { ...DEFAULTS };
for (const k of Object.keys(DEFAULTS)) {
  const env = process.env['PEER_' + k.replace(/[A-Z]/g, (c) => '_' + c).toUpperCase()];
  if (env !== undefined) opts[k] = env;
}
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const m = /^--([a-zA-Z-]+)(?:=(.*))?$/.exec(argv[i]);
  if (!m) die(`unexpected argument ${argv[i]}`);
  const key = m[1].replace(/-([a-z])/g, (_, c) => c.toUpperCase());
  if (!(key in DEFAULTS)) die(`unknown flag --${m[1]}`);
  opts[key] = m[2] ?? argv[++i];
}
for (const k of ['rate', 'seconds', 'rows', 'grace', 'drainTimeout', 'dupWait', 'lateWait', 'batch', 'interval', 'lock', 'payloadBytes', 'notfoundRetry'])
  if (opts[k] !== undefined) opts[k] = Number(opts[k]);
if (!opts.pg) die('--pg <postgres url> is required');
if (!['polling', 'logical'].includes(opts.mode)) die('--mode must be polling or logical');
if (!['steady', 'drain'].includes(opts.scenario)) die('--scenario must be steady or drain');
if (!opts.prefix || !/^[a-z][a-z0-9_]{0,40}$/.test(opts.prefix))
  die('--prefix is required: lowercase [a-z][a-z0-9_]*, max 41 chars (used in SQL identifiers)');

// ---------- logging (stderr only, stdout is reserved for the result) ----------
const LEVELS = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60, silent: 100 };
const log = (...a) => process.stderr.write(`[${new Date().toISOString()}] ${a.join(' ')}\n`);
function die(msg) { process.stderr.write(`run.mjs: ERROR: ${msg}\n`); process.exit(2); }
// TransactionalLogger (pino BaseLogger shape) for the package; pino's default
// logger writes to stdout, which would corrupt our single-JSON output.
const pkgWarnings = {}; // counts of the package's warn/error reasons, e.g. MESSAGE_NOT_FOUND
const pkgLogger = (() => {
  const min = LEVELS[opts.logLevel] ?? 30;
  const mk = (lvl) => (...args) => {
    if (LEVELS[lvl] >= LEVELS.warn) {
      const text = args.map((x) => (typeof x === 'string' ? x : x?.message ?? '')).join(' ');
      const key = /cannot be processed: (\w+)/.exec(text)?.[1] ?? text.slice(0, 60);
      pkgWarnings[key] = (pkgWarnings[key] ?? 0) + 1;
    }
    if (LEVELS[lvl] < min) return;
    const parts = args.map((x) => (x instanceof Error ? `${x.name}: ${x.message}${x.innerError ? ` (inner: ${x.innerError.message})` : ''}`
      : typeof x === 'object' ? (x?.id ? `{msg ${x.id}}` : JSON.stringify(x)?.slice(0, 200)) : String(x)));
    log(`pkg.${lvl}`, ...parts);
  };
  return { fatal: mk('fatal'), error: mk('error'), warn: mk('warn'), info: mk('info'), debug: mk('debug'), trace: mk('trace'), silent: () => {}, level: opts.logLevel };
})();

// ---------- names (all derived from the prefix so parallel runs don't collide) ----------
const schema = opts.prefix;             // own schema holds table + polling function
const table = 'outbox';
const publication = `${opts.prefix}_pub`;
const slot = `${opts.prefix}_slot`;     // slot names are server-wide, hence prefixed
const exchange = `${opts.prefix}.x`;
const queue = `${opts.prefix}.q`;
const routingKey = 'outbox';

const now = () => performance.timeOrigin + performance.now(); // high-res ms epoch, one clock for all roles

// ---------- per-sequence bookkeeping ----------
const N = opts.scenario === 'steady' ? Math.round(opts.rate * opts.seconds) : opts.rows;
const writeTs = new Float64Array(N).fill(NaN);   // payload timestamp (taken just before INSERT)
const commitTs = new Float64Array(N).fill(NaN);  // after COMMIT returned (row is visible)
const arriveTs = new Float64Array(N).fill(NaN);  // first arrival at the consumer
let written = 0, arrived = 0, duplicates = 0, unknown = 0, writeErrors = 0, handlerCalls = 0, publishErrors = 0;
let onAllArrived = null;

const state = { admin: null, prodPool: null, shutdownListener: null, pubConn: null, subConn: null, created: {} };

const baseSettings = {
  dbSchema: schema,
  dbTable: table,
  // Outbox defaults from the package's README/env template (its code default is true for both).
  enableMaxAttemptsProtection: false,
  enablePoisonousMessageProtection: false,
};
const pad = 'x'.repeat(1000);
function makePayload(seq, ts) {
  // ~payloadBytes of JSON: fixed fields + padding trimmed to size
  const p = { seq, writtenAtMs: ts, source: 'pg-transactional-outbox-bench', pad: '' };
  const base = JSON.stringify(p).length;
  p.pad = pad.slice(0, Math.max(0, opts.payloadBytes - base));
  return p;
}

async function setupDatabase() {
  const admin = new pg.Client({ connectionString: opts.pg });
  await admin.connect();
  state.admin = admin;
  // The package's setup SQL uses unqualified index names; pin search_path to our
  // own schema so its DROP INDEX IF EXISTS can never hit somebody else's index.
  await admin.query(`CREATE SCHEMA ${schema}`);
  state.created.schema = true;
  await admin.query(`SET search_path TO ${schema}`);
  const cfg = {
    outboxOrInbox: 'outbox', database: 'unused', schema, table, listenerRole: 'unused',
    publication, replicationSlot: slot, nextMessagesSchema: schema, nextMessagesName: 'next_outbox_messages',
  };
  // The package's own setup SQL (DatabaseSetup). Skipped on purpose: role
  // creation/grants (we run as one superuser; GRANTs to the owner are no-ops).
  await admin.query(DatabaseSetup.dropAndCreateTable(cfg));
  if (opts.mode === 'polling') {
    await admin.query(DatabaseSetup.createPollingFunction(cfg));
    await admin.query(DatabaseSetup.setupPollingIndexes(cfg));
  } else {
    // setupReplicationCore = ALTER ROLE <listener> WITH REPLICATION + DROP/CREATE PUBLICATION.
    // The ALTER ROLE is dropped: our user is already a superuser and we don't
    // change server-wide role attributes from a benchmark.
    const sql = DatabaseSetup.setupReplicationCore(cfg).replace(/^ALTER ROLE.*$/m, '');
    await admin.query(sql);
    state.created.publication = true;
    // Slot creation must be its own transaction (package docs); a bare query is one.
    await admin.query(`SELECT pg_create_logical_replication_slot('${slot}', 'pgoutput')`);
    state.created.slot = true;
  }
  log(`db setup done: schema=${schema} table=${table}` + (opts.mode === 'logical' ? ` publication=${publication} slot=${slot}` : ''));
}

async function setupRabbit() {
  // Publisher connection: confirm channel, as an outbox relay needs to know the broker has the message.
  state.pubConn = await amqp.connect(opts.amqp);
  state.pubConn.on('error', (e) => log('amqp publisher connection error', e.message));
  const pubCh = await state.pubConn.createConfirmChannel();
  await pubCh.assertExchange(exchange, 'direct', { durable: true });
  state.created.exchange = true;
  await pubCh.assertQueue(queue, { durable: true }); // durable queue: persistent messages actually persist
  state.created.queue = true;
  await pubCh.bindQueue(queue, exchange, routingKey);

  // Consumer on its own connection so publish and consume don't share a socket.
  state.subConn = await amqp.connect(opts.amqp);
  state.subConn.on('error', (e) => log('amqp consumer connection error', e.message));
  const subCh = await state.subConn.createChannel();
  await subCh.prefetch(500);
  await subCh.consume(queue, (msg) => {
    const t = now();
    if (!msg) return;
    let seq = -1;
    try { seq = JSON.parse(msg.content.toString()).payload.seq; } catch { /* counted as unknown */ }
    subCh.ack(msg);
    if (!(seq >= 0 && seq < N)) { unknown++; return; }
    if (Number.isNaN(arriveTs[seq])) {
      arriveTs[seq] = t;
      arrived++;
      if (arrived === N && onAllArrived) onAllArrived();
    } else duplicates++;
  }, { noAck: false });

  // The handler the package calls for every outbox message. It runs inside the
  // package's DB transaction; the row is marked processed only after this resolves.
  const publish = (message) => new Promise((resolve, reject) => {
    handlerCalls++;
    const body = Buffer.from(JSON.stringify({
      id: message.id, aggregateType: message.aggregateType, aggregateId: message.aggregateId,
      messageType: message.messageType, createdAt: message.createdAt, payload: message.payload,
    }));
    pubCh.publish(exchange, routingKey, body,
      { persistent: true, messageId: message.id, contentType: 'application/json', type: message.messageType },
      (err) => (err ? (publishErrors++, reject(err)) : resolve()));
  });
  return { handle: async (message) => publish(message) };
}

// Opt-in workaround for the logical listener's lost-row race (FINDINGS.md):
// the WAL change can reach us before the producer's commit is visible to a new
// snapshot, so the package's `SELECT ... FOR NO KEY UPDATE NOWAIT` finds no row,
// logs MESSAGE_NOT_FOUND, and the LSN is acked anyway. 0.5.7 has no knob for
// this (upstream 0.6.0 added maxMessageNotFoundAttempts, default 0), so we hand
// the package DB clients whose lock query is retried a few times, 10 ms apart.
let notfoundRetries = 0;
function retryingDbClientStrategy() {
  const pool = new pg.Pool({ connectionString: opts.pg });
  pool.on('error', (e) => log('handler pool error', e.message));
  return {
    getClient: async () => {
      const client = await pool.connect();
      if (!client.__retryWrapped) {
        client.on('error', (e) => log('handler client error', e.message));
        const query = client.query.bind(client);
        client.query = async (text, values) => {
          let r = await query(text, values);
          if (typeof text === 'string' && text.includes('FOR NO KEY UPDATE NOWAIT') && values) {
            for (let i = 0; r.rowCount === 0 && i < opts.notfoundRetry; i++) {
              notfoundRetries++;
              await sleep(10);
              r = await query(text, values); // READ COMMITTED: new statement = new snapshot
            }
          }
          return r;
        };
        client.__retryWrapped = true;
      }
      return client;
    },
    shutdown: () => pool.end(),
  };
}

function startListener(handler) {
  const dbListenerConfig = { connectionString: opts.pg };
  const strategies = opts.notfoundRetry > 0 ? { messageProcessingDbClientStrategy: retryingDbClientStrategy() } : undefined;
  if (opts.mode === 'polling') {
    const settings = { ...baseSettings, nextMessagesFunctionSchema: schema, nextMessagesFunctionName: 'next_outbox_messages' };
    if (opts.batch !== undefined) settings.nextMessagesBatchSize = opts.batch;
    if (opts.interval !== undefined) settings.nextMessagesPollingIntervalInMs = opts.interval;
    if (opts.lock !== undefined) settings.nextMessagesLockInMs = opts.lock;
    [state.shutdownListener] = initializePollingMessageListener({ outboxOrInbox: 'outbox', dbListenerConfig, settings }, handler, pkgLogger, strategies);
  } else {
    const settings = { ...baseSettings, dbPublication: publication, dbReplicationSlot: slot };
    [state.shutdownListener] = initializeReplicationMessageListener({ outboxOrInbox: 'outbox', dbListenerConfig, settings }, handler, pkgLogger, strategies);
  }
  log(`listener started (${opts.mode})`);
}

// Producer: exactly what an application does with the package — store the
// message with storeOutboxMessage() inside its own business transaction.
const storeOutboxMessage = initializeMessageStorage({ outboxOrInbox: 'outbox', settings: baseSettings }, pkgLogger);
async function writeRows(seqs) {
  const client = await state.prodPool.connect();
  const ts = [];
  try {
    await client.query('BEGIN');
    for (const seq of seqs) {
      const t = now();
      ts.push(t);
      const msg = { id: randomUUID(), aggregateType: 'bench', aggregateId: String(seq), messageType: 'bench_event', payload: makePayload(seq, t) };
      if (opts.concurrency) msg.concurrency = opts.concurrency;
      await storeOutboxMessage(msg, client);
    }
    await client.query('COMMIT');
    const c = now();
    seqs.forEach((seq, i) => { writeTs[seq] = ts[i]; commitTs[seq] = c; });
    written += seqs.length;
    client.release();
  } catch (e) {
    writeErrors += seqs.length;
    log(`write of seq ${seqs[0]}..${seqs.at(-1)} failed: ${e.message}`);
    await client.query('ROLLBACK').catch(() => {});
    client.release(true);
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function waitAllArrived(timeoutMs) {
  if (arrived >= N) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => { onAllArrived = null; resolve(false); }, timeoutMs);
    onAllArrived = () => { clearTimeout(t); onAllArrived = null; resolve(true); };
  });
}
function pct(sorted, p) {
  if (!sorted.length) return null;
  return +sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)].toFixed(2);
}
function lagStats(fromTs) {
  const lags = [];
  for (let i = 0; i < N; i++) if (!Number.isNaN(arriveTs[i]) && !Number.isNaN(fromTs[i])) lags.push(arriveTs[i] - fromTs[i]);
  lags.sort((a, b) => a - b);
  return { n: lags.length, p50: pct(lags, 50), p90: pct(lags, 90), p99: pct(lags, 99), max: lags.length ? +lags.at(-1).toFixed(2) : null,
    mean: lags.length ? +(lags.reduce((a, b) => a + b, 0) / lags.length).toFixed(2) : null };
}
function lostSeqs(limit = 50) {
  const out = [];
  for (let i = 0; i < N && out.length < limit; i++) if (!Number.isNaN(commitTs[i]) && Number.isNaN(arriveTs[i])) out.push(i);
  return out;
}
function lostCount() {
  let lost = 0;
  for (let i = 0; i < N; i++) if (!Number.isNaN(commitTs[i]) && Number.isNaN(arriveTs[i])) lost++;
  return lost;
}

async function dbCounts() {
  const r = await state.admin.query(`SELECT count(*)::int AS total, count(processed_at)::int AS processed,
      count(abandoned_at)::int AS abandoned, coalesce(max(started_attempts),0)::int AS max_started,
      coalesce(max(finished_attempts),0)::int AS max_finished FROM ${schema}.${table}`);
  return r.rows[0];
}

async function runSteady(handler) {
  startListener(handler);
  await sleep(1000); // let the listener connect (replication start / first poll) before timing writes
  const interval = 1000 / opts.rate;
  const t0 = now();
  const progress = setInterval(() => log(`steady: written=${written} arrived=${arrived} dup=${duplicates}`), 5000);
  // Open-loop schedule: row i is due at t0 + i*interval; if we fall behind we
  // write back-to-back (one row per transaction, like a request handler would).
  for (let i = 0; i < N; i++) {
    const wait = t0 + i * interval - now();
    if (wait > 0) await sleep(wait);
    await writeRows([i]);
  }
  const writeSecs = (now() - t0) / 1000;
  log(`steady: all ${written} rows written in ${writeSecs.toFixed(1)} s; waiting up to ${opts.grace} s for arrivals`);
  const complete = await waitAllArrived(opts.grace * 1000);
  const lostWithinGrace = lostCount();
  // A row missing after the grace period may just be queued behind a slow
  // listener; keep waiting a bit so the report can tell slow from lost.
  let lateComplete = complete;
  if (!complete && opts.lateWait > 0) {
    log(`steady: ${lostWithinGrace} rows missing after grace; waiting up to ${opts.lateWait} s more`);
    lateComplete = await waitAllArrived(opts.lateWait * 1000);
  }
  if (lateComplete) await sleep(opts.dupWait * 1000); // catch late duplicates
  clearInterval(progress);
  return { rows_target: N, rows_written: written, write_errors: writeErrors, achieved_write_rate: +(written / writeSecs).toFixed(1),
    all_arrived_within_grace: complete, lost_within_grace: lostWithinGrace,
    lost_after_late_wait: complete ? 0 : lostCount(), late_wait_s: complete ? 0 : opts.lateWait,
    lag_ms_from_write: lagStats(writeTs), lag_ms_from_commit: lagStats(commitTs) };
}

async function runDrain(handler) {
  // Fill the outbox first, listener not yet running (for logical the slot
  // already exists, so the WAL for these rows is retained for it).
  const tw = now();
  const BATCH = 100; // 100 messages per producer transaction, 4 in parallel, just to fill fast
  const batches = [];
  for (let s = 0; s < N; s += BATCH) batches.push(Array.from({ length: Math.min(BATCH, N - s) }, (_, k) => s + k));
  for (let i = 0; i < batches.length; i += 4) await Promise.all(batches.slice(i, i + 4).map(writeRows));
  log(`drain: ${written} rows written in ${((now() - tw) / 1000).toFixed(1)} s (listener stopped)`);
  if (writeErrors) throw new Error(`${writeErrors} rows failed to write`);
  const progress = setInterval(() => log(`drain: arrived=${arrived}/${N} dup=${duplicates}`), 5000);
  const t0 = now();
  startListener(handler);
  const complete = await waitAllArrived(opts.drainTimeout * 1000);
  const secs = (now() - t0) / 1000;
  if (complete) await sleep(opts.dupWait * 1000);
  clearInterval(progress);
  return { rows_target: N, rows_written: written, write_errors: writeErrors, all_arrived: complete,
    drain_seconds: +secs.toFixed(3), rows_per_sec: +(arrived / secs).toFixed(1) };
}

async function cleanup() {
  const errs = [];
  const attempt = async (what, fn) => { try { await fn(); } catch (e) { errs.push(`${what}: ${e.message}`); } };
  if (state.shutdownListener) await attempt('listener shutdown', () => state.shutdownListener());
  if (state.prodPool) await attempt('producer pool', () => state.prodPool.end());
  if (state.pubConn) {
    await attempt('rabbit delete', async () => {
      const ch = await state.pubConn.createChannel();
      if (state.created.queue) await ch.deleteQueue(queue);
      if (state.created.exchange) await ch.deleteExchange(exchange);
      await ch.close();
    });
  }
  for (const c of [state.subConn, state.pubConn]) if (c) await attempt('amqp close', () => c.close());
  if (state.admin) {
    const a = state.admin;
    if (state.created.slot) {
      // The walsender may take a moment to go away after the listener stops.
      await attempt('drop slot', async () => {
        for (let i = 0; ; i++) {
          const r = await a.query(`SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, [slot]);
          if (!r.rowCount) return;
          if (r.rows[0].active_pid && i < 20) { await sleep(250); continue; }
          if (r.rows[0].active_pid) await a.query(`SELECT pg_terminate_backend($1)`, [r.rows[0].active_pid]);
          await a.query(`SELECT pg_drop_replication_slot($1)`, [slot]);
          return;
        }
      });
    }
    if (state.created.publication) await attempt('drop publication', () => a.query(`DROP PUBLICATION IF EXISTS ${publication}`));
    if (state.created.schema) await attempt('drop schema', () => a.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`));
    await attempt('admin close', () => a.end());
  }
  return errs;
}

let loadStart;
async function main() {
  loadStart = os.loadavg();
  log(`pg-transactional-outbox ${PKG_VERSION} mode=${opts.mode} scenario=${opts.scenario} rows=${N} prefix=${opts.prefix}`);
  await setupDatabase();
  const handler = await setupRabbit();
  state.prodPool = new pg.Pool({ connectionString: opts.pg, max: 4 });
  const figures = opts.scenario === 'steady' ? await runSteady(handler) : await runDrain(handler);
  const db = await dbCounts();
  const result = {
    package: 'pg-transactional-outbox', package_version: PKG_VERSION, mode: opts.mode, scenario: opts.scenario,
    params: { rate: opts.scenario === 'steady' ? opts.rate : undefined, seconds: opts.scenario === 'steady' ? opts.seconds : undefined,
      rows: opts.scenario === 'drain' ? opts.rows : undefined, grace_s: opts.grace, payload_bytes: JSON.stringify(makePayload(N, now())).length,
      batch_size: opts.batch ?? 'package default (5)', poll_interval_ms: opts.interval ?? 'package default (500)',
      lock_ms: opts.lock ?? 'package default (5000)', message_concurrency: opts.concurrency ?? 'package default (sequential)',
      notfound_retry: opts.notfoundRetry },
    ...figures,
    arrived, lost: figures.lost_within_grace ?? lostCount(), duplicated: duplicates, unknown_messages: unknown,
    lost_seqs_sample: lostSeqs(), package_warnings: pkgWarnings, notfound_retries_done: notfoundRetries,
    handler_calls: handlerCalls, publish_errors: publishErrors, db_rows: db,
    // The benchmark host is shared (Rust builds); record how loaded it was.
    host: { cpus: os.cpus().length, loadavg_start: loadStart.map((x) => +x.toFixed(2)), loadavg_end: os.loadavg().map((x) => +x.toFixed(2)) },
    finished_at: new Date().toISOString(),
  };
  return result;
}

// Cleanup must run at most once, also when we are killed (SIGINT/SIGTERM):
// otherwise the RabbitMQ queue/exchange and the replication slot are left behind.
let cleaning;
const cleanupOnce = () => (cleaning ??= cleanup());
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, async () => {
    log(`received ${sig}, cleaning up`);
    const errs = await cleanupOnce();
    process.stderr.write(`run.mjs: FAILED: interrupted by ${sig}${errs.length ? `; cleanup problems: ${errs.join('; ')}` : ''}\n`);
    process.exit(sig === 'SIGINT' ? 130 : 143);
  });
}
let result, failure;
try { result = await main(); } catch (e) { failure = e; }
const cleanupErrors = await cleanupOnce();
if (cleanupErrors.length) log('cleanup problems:', cleanupErrors.join('; '));
if (failure) {
  process.stderr.write(`run.mjs: FAILED: ${failure.stack ?? failure}\n`);
  process.exit(1);
}
result.cleanup_errors = cleanupErrors;
process.stdout.write(JSON.stringify(result) + '\n');
// pg/amqplib may leave timers behind (e.g. the package's listener restart timer); exit explicitly.
process.exit(cleanupErrors.length ? 3 : 0);
