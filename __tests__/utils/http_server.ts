/**
 * Loopback HTTP servers for the download tests: a request log, a file sender that can be slow,
 * stall, drop the connection or honour Range, and a Google Drive impersonation (its direct
 * download and both forms of its "can't scan this file for viruses" confirmation page).
 */
import * as http from 'http';
import { AddressInfo, Socket } from 'net';

export interface LoggedRequest {
  path: string;
  range: string | undefined;
  cookie: string | undefined;
}

export interface TestServer {
  base: string;
  requests: LoggedRequest[];
  close(): Promise<void>;
}

export type Handler = (req: http.IncomingMessage, res: http.ServerResponse, url: URL) => void | Promise<void>;

export async function startServer(handler: Handler): Promise<TestServer> {
  const requests: LoggedRequest[] = [];
  const sockets = new Set<Socket>();
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    requests.push({ path: url.pathname + url.search, range: req.headers.range, cookie: req.headers.cookie });
    // No keep-alive: tests pause between requests, and a reused socket the server is closing
    // would fail the next request with ECONNRESET.
    res.setHeader('connection', 'close');
    Promise.resolve(handler(req, res, url)).catch(() => res.destroy());
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    base: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

export interface SendOptions {
  contentType?: string;
  /** Honour `Range: bytes=N-` with a 206 (default true). */
  ranges?: boolean;
  /** Destroy the connection once this many bytes of this response are sent. */
  dropAfter?: number;
  /** Bytes per write and the pause between writes (a slow server). */
  chunk?: number;
  delayMs?: number;
  /** Stop sending (but keep the connection open) after this many bytes: a stalled server. */
  stallAfter?: number;
  /** Omit Content-Length. */
  noLength?: boolean;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function sendFile(req: http.IncomingMessage, res: http.ServerResponse, body: Uint8Array, o: SendOptions = {}): Promise<void> {
  let start = 0;
  const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
  const headers: Record<string, string | number> = { 'content-type': o.contentType ?? 'application/zip' };
  if (m && (o.ranges ?? true)) {
    start = Number(m[1]);
    if (start >= body.length) {
      res.writeHead(416, { 'content-range': `bytes */${body.length}` }).end();
      return;
    }
    headers['content-range'] = `bytes ${start}-${body.length - 1}/${body.length}`;
  }
  const part = body.subarray(start);
  if (!o.noLength) headers['content-length'] = part.length;
  res.writeHead(start > 0 ? 206 : 200, headers);
  const chunk = o.chunk ?? 64 * 1024;
  for (let sent = 0; sent < part.length; ) {
    if (o.stallAfter !== undefined && sent >= o.stallAfter) return; // never ends
    let n = Math.min(chunk, part.length - sent);
    if (o.dropAfter !== undefined) n = Math.min(n, o.dropAfter - sent);
    if (o.stallAfter !== undefined) n = Math.min(n, o.stallAfter - sent);
    if (n > 0) {
      const ok = res.write(part.subarray(sent, sent + n));
      sent += n;
      if (!ok) await new Promise((r) => res.once('drain', r));
    }
    if (o.dropAfter !== undefined && sent >= o.dropAfter) {
      await sleep(20);
      res.socket?.destroy();
      return;
    }
    if (o.delayMs) await sleep(o.delayMs);
  }
  res.end();
}

export const DRIVE_ID = '1OvnZ7OUQFg2bAgFADhT7UnCkSaXst10O';

/** Drive's current confirmation page: a GET form with hidden id, export, confirm and uuid. */
export function confirmFormPage(action: string, id: string, uuid: string): string {
  return `<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
<div class="uc-main"><p class="uc-warning-caption">Google Drive can't scan this file for viruses.</p>
<p class="uc-warning-subcaption">img2pose_v1.zip (160M) is too large for Google to scan for viruses. Would you still like to download this file?</p>
<form id="download-form" action="${action}" method="get"><input type="submit" id="uc-download-link" class="goog-inline-block jfk-button jfk-button-action" value="Download anyway"/>
<input type="hidden" name="id" value="${id}"><input type="hidden" name="export" value="download"><input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="${uuid}"></form></div></body></html>`;
}

/** Drive's older confirmation page: a link with a confirm token, and the token in a cookie. */
export function confirmLinkPage(id: string, token: string): string {
  return `<html><head><title>Google Drive - Virus scan warning</title></head><body><div id="uc-text">
<p class="uc-warning-caption">Google Drive can't scan this file for viruses.</p>
<a id="uc-download-link" class="goog-inline-block jfk-button jfk-button-action" href="/uc?export=download&amp;confirm=${token}&amp;id=${id}">Download anyway</a></div></body></html>`;
}

export type DriveFlow = 'direct' | 'form' | 'link';

/**
 * Google Drive as it serves one file: `/uc?export=download&id=ID` answers the file ('direct'),
 * or redirects to `/download?...` whose page has the form ('form'), or answers the link page
 * with a cookie ('link'). Only the confirmed request (right uuid / token and cookie) gets the file.
 */
export function driveHandler(body: () => Uint8Array, flow: DriveFlow, send: SendOptions = {}): Handler {
  const uuid = 'a1b2c3d4-0000-4000-8000-123456789abc';
  const token = 'Xy9_t0ken';
  return async (req, res, url) => {
    const q = url.searchParams;
    if (q.get('id') !== DRIVE_ID) {
      res.writeHead(404, { 'content-type': 'text/html' }).end('<html><title>Not Found</title></html>');
      return;
    }
    if (url.pathname === '/uc' && flow === 'direct') return sendFile(req, res, body(), send);
    if (url.pathname === '/uc' && flow === 'form') {
      res.writeHead(303, { location: `/download?id=${DRIVE_ID}&export=download` }).end();
      return;
    }
    if (url.pathname === '/download' && flow === 'form') {
      if (q.get('confirm') === 't' && q.get('uuid') === uuid) return sendFile(req, res, body(), send);
      const host = req.headers.host as string;
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(confirmFormPage(`http://${host}/download`, DRIVE_ID, uuid));
      return;
    }
    if (url.pathname === '/uc' && flow === 'link') {
      if (q.get('confirm') === token && (req.headers.cookie ?? '').includes(`download_warning_13058=${token}`)) return sendFile(req, res, body(), send);
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'set-cookie': `download_warning_13058=${token}; Path=/; HttpOnly` });
      res.end(confirmLinkPage(DRIVE_ID, token));
      return;
    }
    res.writeHead(404).end();
  };
}
