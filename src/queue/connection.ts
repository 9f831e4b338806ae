/**
 * Redis connection settings of the queue commands, in ioredis' conventions (which BullMQ uses):
 * a URL `redis://[user][:password]@host:port[/db]`, or `rediss://...` for TLS, plus optional TLS
 * files. The URL may come from the environment (REDIS_URL) so a password stays off the command
 * line, where other users of the host could read it in the process list.
 */
import * as fs from 'fs';
import type { ConnectionOptions as TlsOptions } from 'tls';
import type { Redis, RedisOptions } from 'ioredis';
import { OptionError } from '../errors';

/** The Redis of the queue, as the user gave it. */
export interface RedisSettings {
  url: string;
  /** PEM files for TLS: a private CA, and a client certificate and key for mutual TLS. */
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
}

/**
 * How long a queue command (add, status, results) waits for Redis before it gives up. Workers
 * wait for ever instead: a restarting Redis must not end a worker.
 */
export const COMMAND_CONNECT_TIMEOUT_MS = 10_000;

/** The URL from the option or REDIS_URL; a missing or malformed one is an OptionError. */
export function redisUrl(option: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  const url = option ?? env.REDIS_URL;
  if (!url) throw new OptionError('--redis', 'a Redis URL (redis://host:port) or REDIS_URL in the environment', url);
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new OptionError('--redis', 'a URL such as redis://host:6379 or rediss://user:password@host:6380/0', redactUrl(url));
  }
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') {
    throw new OptionError('--redis', 'a redis:// or rediss:// URL', redactUrl(url));
  }
  return url;
}

/** The URL with its password replaced, for messages and logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return url.replace(/\/\/([^@/]*)@/, '//***@');
  }
}

/**
 * ioredis options for `settings`. `persistent` (workers): retry for ever and queue commands
 * while disconnected, as BullMQ requires of a worker's connection (maxRetriesPerRequest null).
 * Otherwise (one-shot commands): fail after COMMAND_CONNECT_TIMEOUT_MS with the cause.
 */
export function redisOptions(settings: RedisSettings, persistent: boolean): ClientOptions {
  const tls = tlsOptions(settings);
  const base = {
    // BullMQ's blocking commands must not be cut short by a per-command retry limit.
    maxRetriesPerRequest: null,
    enableReadyCheck: true,
    ...(tls ? { tls } : {}),
  };
  if (persistent) {
    // Back off up to 5 s between reconnects; never give up.
    return { ...base, retryStrategy: (times: number) => Math.min(200 * times, 5000) };
  }
  return {
    ...base,
    connectTimeout: COMMAND_CONNECT_TIMEOUT_MS,
    // A one-shot command reports an unreachable Redis instead of waiting for it.
    retryStrategy: (times: number) => (times > 3 ? null : 500 * times),
    maxRetriesPerRequest: 2,
  };
}

/** ioredis options with a retry strategy always given (BullMQ's option type wants a function). */
export type ClientOptions = RedisOptions & { retryStrategy: (times: number) => number | null };

/** BullMQ's `connection` option: the URL and the same ioredis options. */
export function bullConnection(settings: RedisSettings, persistent: boolean): ClientOptions & { url: string } {
  return { url: settings.url, ...redisOptions(settings, persistent) };
}

/** TLS options from the files, or undefined when none is given (rediss:// still turns TLS on). */
export function tlsOptions(settings: RedisSettings): TlsOptions | undefined {
  const read = (file: string | undefined, option: string): Buffer | undefined => {
    if (file === undefined) return undefined;
    try {
      return fs.readFileSync(file);
    } catch (e) {
      throw new OptionError(option, 'a readable PEM file', `${file} (${(e as NodeJS.ErrnoException).code ?? 'unreadable'})`);
    }
  };
  const ca = read(settings.tlsCa, '--redis-tls-ca');
  const cert = read(settings.tlsCert, '--redis-tls-cert');
  const key = read(settings.tlsKey, '--redis-tls-key');
  if (!ca && !cert && !key) return undefined;
  if ((cert === undefined) !== (key === undefined)) {
    throw new OptionError('--redis-tls-cert/--redis-tls-key', 'both or neither', cert ? 'only a certificate' : 'only a key');
  }
  return { ...(ca ? { ca } : {}), ...(cert ? { cert } : {}), ...(key ? { key } : {}) };
}

/** A connected client for a one-shot command; rejects with the cause if Redis cannot be reached. */
export async function connectOnce(settings: RedisSettings): Promise<Redis> {
  // Loaded here, not at the top: the CLI's other commands should not pay for ioredis at start.
  const { Redis } = await import('ioredis');
  const client = new Redis(settings.url, { ...redisOptions(settings, false), lazyConnect: true });
  // The first error event has the cause (a refused connection, a wrong password); what
  // connect() rejects with may only say that the connection closed.
  let first: Error | undefined;
  client.on('error', (e: Error) => {
    first ??= e;
  });
  try {
    await client.connect();
    await client.ping();
  } catch (e) {
    client.disconnect();
    throw new Error(`cannot reach Redis at ${redactUrl(settings.url)}: ${(first ?? (e as Error)).message}`);
  }
  return client;
}
