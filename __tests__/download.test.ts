// Downloading like Google Drive serves files, against loopback servers: both confirmation
// flows, redirects, slow / stalled / dropping servers, wrong content types, errors.
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { DownloadError, DownloadProgress, confirmationUrl, downloadFile } from '../src/io/download';
import { DRIVE_ID, TestServer, confirmFormPage, confirmLinkPage, driveHandler, sendFile, startServer } from './utils/http_server';

// Deterministic bytes that no step could produce by accident (not all zeros, not text).
const BODY = (() => {
  const b = new Uint8Array(1_000_003);
  let x = 12345;
  for (let i = 0; i < b.length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  b.set([0x50, 0x4b, 0x03, 0x04]); // a zip's first bytes
  return b;
})();
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

let tmp: string;
let server: TestServer | undefined;
const fast = { retryDelayMs: 10, idleTimeoutMs: 2000 };

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-download-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
afterEach(async () => {
  await server?.close();
  server = undefined;
});

let n = 0;
function dest(): string {
  return path.join(tmp, `file${n++}.zip`);
}

const driveUrl = (base: string): string => `${base}/uc?export=download&id=${DRIVE_ID}`;

describe('Google Drive flows', () => {
  it('direct download: one request, the exact bytes, renamed from .part only at the end', async () => {
    server = await startServer(driveHandler(() => BODY, 'direct'));
    const d = dest();
    const progress: DownloadProgress[] = [];
    const r = await downloadFile(driveUrl(server.base), { ...fast, dest: d, onProgress: (p) => progress.push(p) });
    expect(sha(fs.readFileSync(d))).toBe(sha(BODY));
    expect(r.bytes).toBe(BODY.length);
    expect(fs.existsSync(`${d}.part`)).toBe(false);
    expect(server.requests).toHaveLength(1);
    expect(progress[progress.length - 1]).toEqual({ received: BODY.length, total: BODY.length });
    expect(progress.length).toBeGreaterThan(2);
  });

  it("the confirmation page's form: redirect, page, then the form's action with its hidden fields", async () => {
    server = await startServer(driveHandler(() => BODY, 'form'));
    const d = dest();
    const r = await downloadFile(driveUrl(server.base), { ...fast, dest: d });
    expect(sha(fs.readFileSync(d))).toBe(sha(BODY));
    expect(server.requests.map((q) => q.path)).toEqual([
      `/uc?export=download&id=${DRIVE_ID}`,
      `/download?id=${DRIVE_ID}&export=download`,
      `/download?id=${DRIVE_ID}&export=download&confirm=t&uuid=a1b2c3d4-0000-4000-8000-123456789abc`,
    ]);
    expect(r.url).toBe(`${server.base}/download?id=${DRIVE_ID}&export=download&confirm=t&uuid=a1b2c3d4-0000-4000-8000-123456789abc`);
  });

  it("the older page: a confirm link, followed with the page's cookie", async () => {
    server = await startServer(driveHandler(() => BODY, 'link'));
    const d = dest();
    await downloadFile(driveUrl(server.base), { ...fast, dest: d });
    expect(sha(fs.readFileSync(d))).toBe(sha(BODY));
    expect(server.requests).toHaveLength(2);
    expect(server.requests[1].path).toBe(`/uc?export=download&confirm=Xy9_t0ken&id=${DRIVE_ID}`);
    expect(server.requests[1].cookie).toBe('download_warning_13058=Xy9_t0ken');
  });

  it('confirmationUrl reads the form (entities, relative action) and the link, and nothing from other pages', () => {
    expect(confirmationUrl(confirmFormPage('https://drive.usercontent.google.com/download', 'ID1', 'U-1'), 'https://drive.google.com/uc?id=ID1')).toBe(
      'https://drive.usercontent.google.com/download?id=ID1&export=download&confirm=t&uuid=U-1',
    );
    expect(confirmationUrl(confirmFormPage('/download', 'a&amp;b', 'u'), 'https://x.test/uc')).toBe('https://x.test/download?id=a%26b&export=download&confirm=t&uuid=u');
    expect(confirmationUrl(confirmLinkPage('ID2', 'tok'), 'https://drive.google.com/uc?id=ID2')).toBe(
      'https://drive.google.com/uc?export=download&confirm=tok&id=ID2',
    );
    expect(confirmationUrl('<html><title>Quota exceeded</title><form action="/x" method="post"></form></html>', 'https://x.test/')).toBeUndefined();
    expect(confirmationUrl('<html><body>Sign in</body></html>', 'https://x.test/')).toBeUndefined();
  });

  it('follows a redirect chain', async () => {
    server = await startServer((req, res, url) => {
      const hop = Number(url.searchParams.get('hop') ?? 0);
      if (hop < 3) res.writeHead(302, { location: `/r?hop=${hop + 1}` }).end();
      else return sendFile(req, res, BODY);
    });
    const d = dest();
    const r = await downloadFile(`${server.base}/r`, { ...fast, dest: d });
    expect(sha(fs.readFileSync(d))).toBe(sha(BODY));
    expect(server.requests.map((q) => q.path)).toEqual(['/r', '/r?hop=1', '/r?hop=2', '/r?hop=3']);
    expect(r.url).toBe(`${server.base}/r?hop=3`);
  });
});

describe('bad connections', () => {
  it('a slow server: completes, reporting progress all along', async () => {
    server = await startServer((req, res) => sendFile(req, res, BODY, { chunk: 100_000, delayMs: 50 }));
    const d = dest();
    const seen: number[] = [];
    await downloadFile(`${server.base}/f`, { ...fast, dest: d, onProgress: (p) => seen.push(p.received) });
    expect(sha(fs.readFileSync(d))).toBe(sha(BODY));
    expect(new Set(seen).size).toBeGreaterThanOrEqual(10);
  });

  it('a dropped connection mid-file: resumed with a Range request from where the file ends', async () => {
    let calls = 0;
    server = await startServer((req, res) => sendFile(req, res, BODY, calls++ === 0 ? { dropAfter: 400_000 } : {}));
    const d = dest();
    await downloadFile(`${server.base}/f`, { ...fast, dest: d });
    expect(sha(fs.readFileSync(d))).toBe(sha(BODY));
    expect(server.requests.map((q) => q.range)).toEqual([undefined, expect.stringMatching(/^bytes=\d+-$/)]);
    const resumedAt = Number(/\d+/.exec(server.requests[1].range as string)?.[0]);
    expect(resumedAt).toBeGreaterThan(0);
    expect(resumedAt).toBeLessThanOrEqual(400_000);
  });

  it('a dropped connection on a server without Range support: the whole file again', async () => {
    let calls = 0;
    server = await startServer((req, res) => sendFile(req, res, BODY, calls++ === 0 ? { dropAfter: 300_000, ranges: false } : { ranges: false }));
    const d = dest();
    await downloadFile(`${server.base}/f`, { ...fast, dest: d });
    expect(sha(fs.readFileSync(d))).toBe(sha(BODY));
    expect(server.requests).toHaveLength(2);
  });

  it('an interrupted process: the .part it left is resumed by the next one', async () => {
    server = await startServer((req, res) => sendFile(req, res, BODY));
    const d = dest();
    fs.writeFileSync(`${d}.part`, BODY.subarray(0, 123_456));
    await downloadFile(`${server.base}/f`, { ...fast, dest: d });
    expect(sha(fs.readFileSync(d))).toBe(sha(BODY));
    expect(server.requests.map((q) => q.range)).toEqual(['bytes=123456-']);
  });

  it('a connection that breaks every 100 kB but moves on each time: gets there', async () => {
    server = await startServer((req, res) => sendFile(req, res, BODY, { dropAfter: 100_000 }));
    const d = dest();
    await downloadFile(`${server.base}/f`, { ...fast, dest: d, retries: 2 });
    expect(sha(fs.readFileSync(d))).toBe(sha(BODY));
    expect(server.requests.length).toBeGreaterThanOrEqual(11);
    const starts = server.requests.slice(1).map((r) => Number(/^bytes=(\d+)-$/.exec(r.range ?? '')?.[1]));
    expect(starts.every((x, i) => x > (i === 0 ? 0 : starts[i - 1]))).toBe(true);
  });

  it('a server that stops giving anything: fails after the retries, keeping the .part for a later resume', async () => {
    let calls = 0;
    server = await startServer((req, res) => sendFile(req, res, BODY, { dropAfter: calls++ === 0 ? 100_000 : 0 }));
    const d = dest();
    const err = await downloadFile(`${server.base}/f`, { ...fast, dest: d, retries: 2 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DownloadError);
    expect((err as DownloadError).message).toMatch(/\(gave up after 3 failed attempts in a row\)$/);
    expect(server.requests).toHaveLength(4);
    expect(server.requests.slice(1).every((r) => r.range === server?.requests[1].range)).toBe(true);
    const kept = fs.statSync(`${d}.part`).size;
    expect(kept).toBeGreaterThan(0);
    expect(server.requests[1].range).toBe(`bytes=${kept}-`);
    expect(fs.existsSync(d)).toBe(false);
  });

  it('a stalled server: the idle timeout ends the attempt and the next one resumes', async () => {
    let calls = 0;
    server = await startServer((req, res) => sendFile(req, res, BODY, calls++ === 0 ? { stallAfter: 200_000 } : {}));
    const d = dest();
    const started = Date.now();
    await downloadFile(`${server.base}/f`, { ...fast, idleTimeoutMs: 300, dest: d });
    expect(Date.now() - started).toBeLessThan(5000);
    expect(sha(fs.readFileSync(d))).toBe(sha(BODY));
    expect(server.requests[1].range).toBe('bytes=200000-');
  });

  it('a response that stops short of its Content-Length is not taken for the file', async () => {
    let calls = 0;
    server = await startServer((req, res) => {
      if (calls++ > 0) return sendFile(req, res, BODY);
      res.writeHead(200, { 'content-length': BODY.length, 'content-type': 'application/octet-stream' });
      res.end(BODY.subarray(0, 1000)); // ends early: the client sees the connection close
    });
    const d = dest();
    await downloadFile(`${server.base}/f`, { ...fast, dest: d });
    expect(sha(fs.readFileSync(d))).toBe(sha(BODY));
  });
});

describe('what the server sends', () => {
  it('a 404: at once, no retry, with the status', async () => {
    server = await startServer((_req, res) => void res.writeHead(404, { 'content-type': 'text/html' }).end('<html>Not Found</html>'));
    const err = (await downloadFile(`${server.base}/nope`, { ...fast, dest: dest() }).catch((e: unknown) => e)) as DownloadError;
    expect(err).toBeInstanceOf(DownloadError);
    expect(err.kind).toBe('http');
    expect(err.message).toBe('HTTP 404 Not Found');
    expect(server.requests).toHaveLength(1);
  });

  it('a 503 is retried', async () => {
    let calls = 0;
    server = await startServer((req, res) => (calls++ === 0 ? void res.writeHead(503).end() : sendFile(req, res, BODY)));
    const d = dest();
    await downloadFile(`${server.base}/f`, { ...fast, dest: d });
    expect(sha(fs.readFileSync(d))).toBe(sha(BODY));
  });

  it('an HTML page without a way on (quota, sign-in): refused, saying what came', async () => {
    server = await startServer((_req, res) => void res.writeHead(200, { 'content-type': 'text/html' }).end('<html><head><title>Quota exceeded</title></head><body>Too many users</body></html>'));
    const d = dest();
    const err = (await downloadFile(`${server.base}/f`, { ...fast, dest: d }).catch((e: unknown) => e)) as DownloadError;
    expect(err.kind).toBe('html');
    expect(err.found).toBe('an HTML page (text/html, titled "Quota exceeded")');
    expect(fs.existsSync(d) || fs.existsSync(`${d}.part`)).toBe(false);
  });

  it('an HTML page sent as application/octet-stream is still recognised as a page', async () => {
    server = await startServer((_req, res) => void res.writeHead(200, { 'content-type': 'application/octet-stream' }).end('\n<!DOCTYPE html><html><title>Error</title></html>'));
    const err = (await downloadFile(`${server.base}/f`, { ...fast, dest: dest() }).catch((e: unknown) => e)) as DownloadError;
    expect(err.kind).toBe('html');
    expect(err.found).toMatch(/^an HTML page \(application\/octet-stream, titled "Error"\)$/);
  });

  it('the file with an odd content type (text/plain, none) is still the file', async () => {
    for (const contentType of ['text/plain', '']) {
      server = await startServer((req, res) => sendFile(req, res, BODY, { contentType, noLength: true }));
      const d = dest();
      await downloadFile(`${server.base}/f`, { ...fast, dest: d });
      expect(sha(fs.readFileSync(d))).toBe(sha(BODY));
      await server.close();
      server = undefined;
    }
  });

  it('no server at all: a network error at once (no retries)', async () => {
    const closed = await startServer(() => undefined);
    const url = `${closed.base}/f`;
    await closed.close();
    const started = Date.now();
    const err = (await downloadFile(url, { dest: dest() }).catch((e: unknown) => e)) as DownloadError;
    expect(Date.now() - started).toBeLessThan(1000);
    expect(err.kind).toBe('network');
    expect(err.message).toMatch(/^cannot connect \(ECONNREFUSED\)$/);
  });
});
