/**
 * Downloading one large file over HTTP(S) the way Google Drive serves it, with Node's fetch:
 *
 * - Drive answers a small file directly; for a large one it first answers an HTML page ("can't
 *   scan this file for viruses") whose form (`id="download-form"`, GET, hidden inputs `id`,
 *   `export`, `confirm`, `uuid`) gives the real download URL; older pages instead link to
 *   `/uc?export=download&confirm=...&id=...` and set a cookie. Both are followed (at most a few
 *   pages), with the cookies they set. Redirects are followed by fetch.
 * - The bytes go to `<dest>.part`, renamed to `dest` only when complete. A connection that drops
 *   mid-file (or a stall longer than the idle timeout, or a server error) is retried a few times,
 *   asking for the rest with an HTTP Range; a server that ignores Range sends it all again. A
 *   `.part` left by an interrupted process is resumed the same way.
 * - A failure before any byte arrives (no network, refused, 404) is not retried: it is reported
 *   at once.
 */
import { promises as fsp } from 'fs';

export interface DownloadProgress {
  /** Bytes of the file on disk so far (a resumed download starts above 0). */
  received: number;
  /** The file's size when the server said it. */
  total: number | undefined;
}

export interface DownloadOptions {
  /** Where the finished file goes; `<dest>.part` holds it meanwhile. */
  dest: string;
  onProgress?: (p: DownloadProgress) => void;
  /** An attempt with no response or no new byte for this long fails (and is retried). Default 60 s. */
  idleTimeoutMs?: number;
  /** Further attempts in a row that bring no new byte (dropped connections, stalls, server errors). Default 5. */
  retries?: number;
  /** Wait before a further attempt (doubling each time). Default 1 s. */
  retryDelayMs?: number;
  /** The fetch to use (default: the global one). */
  fetch?: typeof fetch;
}

export type DownloadFailureKind = 'network' | 'http' | 'html' | 'timeout' | 'incomplete';

/** Why a download failed, in words; `found` says what the server sent instead of the file. */
export class DownloadError extends Error {
  constructor(
    message: string,
    readonly url: string,
    readonly kind: DownloadFailureKind,
    readonly found?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'DownloadError';
  }
}

export interface DownloadResult {
  path: string;
  bytes: number;
  /** The URL the file finally came from (after pages and redirects). */
  url: string;
}

/** HTML pages are read to find a form in them; nothing bigger is one. */
const MAX_PAGE_BYTES = 2 * 1024 * 1024;
/** Confirmation pages followed in a row before giving up. */
const MAX_PAGES = 4;

export async function downloadFile(url: string, options: DownloadOptions): Promise<DownloadResult> {
  const { dest, onProgress, idleTimeoutMs = 60_000, retries = 5, retryDelayMs = 1000 } = options;
  const fetchFn = options.fetch ?? fetch;
  const part = `${dest}.part`;
  const cookies = new CookieJar();
  let target = url;
  let pages = 0;
  let failures = 0;
  let restarted = false;

  const retryOrThrow = async (error: DownloadError): Promise<void> => {
    failures++;
    if (failures > retries) {
      throw new DownloadError(`${error.message} (gave up after ${failures} failed attempt${failures === 1 ? '' : 's'} in a row)`, error.url, error.kind, error.found, { cause: error.cause });
    }
    await delay(retryDelayMs * 2 ** (failures - 1));
  };

  for (;;) {
    const have = await sizeOf(part);
    const attempt = new Attempt(idleTimeoutMs);
    let res: Response;
    try {
      const headers: Record<string, string> = { 'user-agent': 'img2pose-tfjs' };
      if (have > 0) headers.range = `bytes=${have}-`;
      const cookie = cookies.header(target);
      if (cookie) headers.cookie = cookie;
      res = await attempt.run(fetchFn(target, { headers, redirect: 'follow', signal: attempt.signal }));
    } catch (e) {
      attempt.end();
      const failure = networkFailure(target, e, attempt.timedOut, idleTimeoutMs);
      // Nothing answered at all: offline, refused, unknown host. Report it now, not after retries.
      if (failures === 0 && !attempt.timedOut && have === 0) throw failure;
      await retryOrThrow(failure);
      continue;
    }
    const where = res.url || target;
    cookies.take(where, res.headers);

    if (res.status === 416 && have > 0 && !restarted) {
      // The .part does not fit what the server has now: start over.
      attempt.end();
      restarted = true;
      await fsp.rm(part, { force: true });
      continue;
    }
    if (!res.ok) {
      attempt.end();
      const failure = new DownloadError(`HTTP ${res.status} ${res.statusText}`.trim(), where, 'http', `HTTP ${res.status}`);
      if (res.status >= 500 || res.status === 408 || res.status === 429) {
        await retryOrThrow(failure);
        continue;
      }
      throw failure;
    }

    const reader = (res.body ?? emptyBody()).getReader();
    let first: Uint8Array;
    try {
      const r = await attempt.run(reader.read());
      first = r.done ? new Uint8Array(0) : r.value;
    } catch (e) {
      attempt.end();
      await retryOrThrow(networkFailure(where, e, attempt.timedOut, idleTimeoutMs));
      continue;
    }

    const contentType = res.headers.get('content-type') ?? '';
    if (looksLikePage(contentType, first, res.status)) {
      let page: string;
      try {
        page = await readPage(reader, first, attempt);
      } catch (e) {
        attempt.end();
        await retryOrThrow(networkFailure(where, e, attempt.timedOut, idleTimeoutMs));
        continue;
      }
      attempt.end();
      const next = confirmationUrl(page, where);
      if (next === undefined || pages >= MAX_PAGES) {
        throw new DownloadError(
          pages >= MAX_PAGES ? `confirmation pages kept coming (${pages} in a row)` : 'the server sent an HTML page instead of the file',
          where,
          'html',
          `an HTML page (${contentType || 'no content type'}${pageTitle(page) ? `, titled "${pageTitle(page)}"` : ''})`,
        );
      }
      pages++;
      target = next;
      continue;
    }

    // The file itself, whole (200) or from where the .part ends (206).
    let offset = 0;
    let total: number | undefined;
    if (res.status === 206) {
      const range = parseContentRange(res.headers.get('content-range'));
      if (range === undefined || range.start !== have) {
        // A range we did not ask for: start over without one (once).
        attempt.end();
        await reader.cancel().catch(() => undefined);
        if (restarted) throw new DownloadError(`the server sent a range we did not ask for (${res.headers.get('content-range') ?? 'none'})`, where, 'http');
        restarted = true;
        await fsp.rm(part, { force: true });
        continue;
      }
      offset = have;
      total = range.total;
    } else {
      const length = Number(res.headers.get('content-length') ?? NaN);
      total = Number.isSafeInteger(length) && length >= 0 ? length : undefined;
    }

    let received = offset;
    const fh = await fsp.open(part, offset > 0 ? 'a' : 'w');
    try {
      onProgress?.({ received, total });
      let chunk: Uint8Array | undefined = first;
      while (chunk !== undefined) {
        if (chunk.length > 0) {
          await fh.write(chunk);
          received += chunk.length;
          onProgress?.({ received, total });
        }
        const r = await attempt.run(reader.read());
        chunk = r.done ? undefined : r.value;
      }
    } catch (e) {
      attempt.end();
      await fh.close();
      // Only attempts that bring nothing count against the retries: a connection that keeps
      // breaking but moves the file on each time gets there.
      if (received > have) {
        failures = 0;
        await delay(retryDelayMs);
        continue;
      }
      await retryOrThrow(networkFailure(where, e, attempt.timedOut, idleTimeoutMs, received, total));
      continue;
    }
    attempt.end();
    await fh.close();
    if (total !== undefined && received !== total) {
      await retryOrThrow(new DownloadError(`the connection ended after ${received} of ${total} bytes`, where, 'incomplete'));
      continue;
    }
    await fsp.rename(part, dest);
    return { path: dest, bytes: received, url: where };
  }
}

/** One request's lifetime: aborted when no response or byte comes for `idleMs`. */
class Attempt {
  private readonly controller = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  timedOut = false;

  constructor(private readonly idleMs: number) {
    this.arm();
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** Awaits `step`, restarting the idle clock when it settles. */
  async run<T>(step: Promise<T>): Promise<T> {
    try {
      return await step;
    } finally {
      this.arm();
    }
  }

  end(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (!this.controller.signal.aborted) this.controller.abort();
  }

  private arm(): void {
    if (this.timer) clearTimeout(this.timer);
    if (this.controller.signal.aborted) return;
    this.timer = setTimeout(() => {
      this.timedOut = true;
      this.controller.abort();
    }, this.idleMs);
    // A stalled download must not be what keeps the process alive, nor a timer keep it after.
    this.timer.unref();
  }
}

function networkFailure(url: string, e: unknown, timedOut: boolean, idleMs: number, received?: number, total?: number): DownloadError {
  const at = received === undefined ? '' : ` after ${received}${total === undefined ? '' : ` of ${total}`} bytes`;
  if (timedOut) return new DownloadError(`no data for ${(idleMs / 1000).toFixed(1)} s${at}`, url, 'timeout', undefined, { cause: e });
  const cause = (e as { cause?: { code?: string; message?: string } }).cause;
  const why = cause?.code ?? cause?.message ?? (e instanceof Error ? e.message : String(e));
  return new DownloadError(`${received === undefined ? 'cannot connect' : 'the connection broke'}${at} (${why})`, url, 'network', undefined, { cause: e });
}

function looksLikePage(contentType: string, first: Uint8Array, status: number): boolean {
  if (/text\/html|application\/xhtml/i.test(contentType)) return true;
  // A wrong content type on a page: decide by its first bytes (not in a ranged reply, whose
  // bytes are from the middle of the file).
  if (status === 206) return false;
  const head = Buffer.from(first.subarray(0, 64)).toString('latin1').trimStart().toLowerCase();
  return head.startsWith('<!doctype html') || head.startsWith('<html');
}

async function readPage(reader: ReadableStreamDefaultReader<Uint8Array>, first: Uint8Array, attempt: Attempt): Promise<string> {
  const chunks = [first];
  let size = first.length;
  while (size < MAX_PAGE_BYTES) {
    const r = await attempt.run(reader.read());
    if (r.done) break;
    chunks.push(r.value);
    size += r.value.length;
  }
  await reader.cancel().catch(() => undefined);
  return Buffer.concat(chunks).toString('utf8');
}

function emptyBody(): ReadableStream<Uint8Array> {
  return new ReadableStream({ start: (c) => c.close() });
}

const ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", '#39': "'", '#x27': "'" };

function decodeEntities(s: string): string {
  return s.replace(/&(#x[0-9a-f]+|#[0-9]+|[a-z]+);/gi, (m, e: string) => {
    const k = e.toLowerCase();
    if (k in ENTITIES) return ENTITIES[k];
    if (k.startsWith('#x')) return String.fromCodePoint(parseInt(k.slice(2), 16));
    if (k.startsWith('#')) return String.fromCodePoint(parseInt(k.slice(1), 10));
    return m;
  });
}

function attributes(tag: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of tag.matchAll(/([a-zA-Z_:][-a-zA-Z0-9_:.]*)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))/g)) {
    out.set(m[1].toLowerCase(), decodeEntities(m[2] ?? m[3] ?? m[4] ?? ''));
  }
  return out;
}

/**
 * The download URL a Drive confirmation page points to: its download form's action with the
 * form's hidden fields as the query, or else a link carrying `confirm=`. Undefined when the page
 * has neither (an error page, a quota notice, a sign-in page).
 */
export function confirmationUrl(html: string, pageUrl: string): string | undefined {
  const forms = [...html.matchAll(/<form\b([^>]*)>([\s\S]*?)<\/form>/gi)].map((m) => ({ attrs: attributes(m[1]), body: m[2] }));
  const fields = (body: string): [string, string][] =>
    [...body.matchAll(/<input\b([^>]*)>/gi)]
      .map((m) => attributes(m[1]))
      .filter((a) => (a.get('type') ?? '').toLowerCase() === 'hidden' && a.has('name'))
      .map((a) => [a.get('name') as string, a.get('value') ?? '']);
  const form =
    forms.find((f) => f.attrs.get('id') === 'download-form') ?? forms.find((f) => fields(f.body).some(([name]) => name === 'confirm'));
  try {
    if (form && (form.attrs.get('method') ?? 'get').toLowerCase() === 'get') {
      const u = new URL(form.attrs.get('action') || pageUrl, pageUrl);
      for (const [name, value] of fields(form.body)) u.searchParams.set(name, value);
      return u.href;
    }
    const link = /href\s*=\s*["']([^"']*[?&](?:amp;)?confirm=[^"']*)["']/i.exec(html);
    if (link) return new URL(decodeEntities(link[1]), pageUrl).href;
  } catch {
    // an action or link that is no URL: no way on from this page
  }
  return undefined;
}

function pageTitle(html: string): string | undefined {
  const m = /<title[^>]*>([\s\S]*?)<\/title>/i.exec(html);
  return m ? decodeEntities(m[1]).replace(/\s+/g, ' ').trim().slice(0, 80) : undefined;
}

function parseContentRange(value: string | null): { start: number; total: number | undefined } | undefined {
  const m = /^bytes\s+(\d+)-(\d+)\/(\d+|\*)$/i.exec(value?.trim() ?? '');
  if (!m) return undefined;
  return { start: Number(m[1]), total: m[3] === '*' ? undefined : Number(m[3]) };
}

async function sizeOf(file: string): Promise<number> {
  try {
    return (await fsp.stat(file)).size;
  } catch {
    return 0;
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The cookies servers set, sent back to the same host (Drive's older flow needs its warning cookie). */
class CookieJar {
  private readonly byHost = new Map<string, Map<string, string>>();

  take(url: string, headers: Headers): void {
    const host = new URL(url).host;
    const setCookies = typeof headers.getSetCookie === 'function' ? headers.getSetCookie() : [];
    for (const line of setCookies) {
      const [pair] = line.split(';');
      const eq = pair.indexOf('=');
      if (eq <= 0) continue;
      const jar = this.byHost.get(host) ?? new Map<string, string>();
      jar.set(pair.slice(0, eq).trim(), pair.slice(eq + 1).trim());
      this.byHost.set(host, jar);
    }
  }

  header(url: string): string | undefined {
    const jar = this.byHost.get(new URL(url).host);
    return jar && jar.size > 0 ? [...jar].map(([k, v]) => `${k}=${v}`).join('; ') : undefined;
  }
}
