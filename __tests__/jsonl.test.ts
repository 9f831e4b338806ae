/**
 * Resumable local runs (src/jsonl.ts): sharding, reading a results file back (a crash's cut line
 * included), the appending writer. The command line's `detect --jsonl --resume --shard` is tested
 * with a real process killed mid-run at the end.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { OptionError } from '../src/errors';
import { JsonlWriter, inShard, notDone, parseShard, readDone, shardOf, stampOf } from '../src/jsonl';

let tmp: string;

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-jsonl-'));
});

afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('--shard i/n', () => {
  it('parses i/n with 0 <= i < n, refuses the rest', () => {
    expect(parseShard('0/4')).toEqual({ index: 0, count: 4 });
    expect(parseShard(' 3 / 4 ')).toEqual({ index: 3, count: 4 });
    expect(parseShard('0/1')).toEqual({ index: 0, count: 1 });
    for (const bad of ['4/4', '1/0', '-1/4', '1', 'a/b', '1/4/2', '']) {
      expect(() => parseShard(bad)).toThrow(OptionError);
    }
  });

  it('every image in exactly one shard, shares near equal, independent of order and company', () => {
    const images = Array.from({ length: 4000 }, (_, i) => `photos/set${i % 7}/img_${i}.jpg`);
    const shards = [0, 1, 2, 3].map((index) => inShard(images, { index, count: 4 }));
    expect(shards.flat().sort()).toEqual([...images].sort());
    for (const s of shards) expect(Math.abs(s.length - 1000)).toBeLessThan(120);
    // The same image lands in the same shard whatever else is listed, in any order.
    const reversed = [0, 1, 2, 3].map((index) => inShard([...images].reverse(), { index, count: 4 }));
    reversed.forEach((s, k) => expect([...s].sort()).toEqual([...shards[k]].sort()));
    expect(inShard(images.slice(0, 1), { index: shardOf(images[0], 4), count: 4 })).toEqual(images.slice(0, 1));
    // The hash is of the path as given: the first 32 bits of SHA-1 (`printf a.jpg | sha1sum`: 56ceeb90...).
    expect(shardOf('a.jpg', 1000)).toBe(0x56ceeb90 % 1000);
    expect(inShard(images, undefined)).toEqual(images);
  });
});

describe('reading a results file back', () => {
  it('keeps results with their stamps, drops a line cut short, lets a later error supersede', async () => {
    const file = path.join(tmp, 'r1.jsonl');
    const lines = [
      { image: 'a.png', size: 10, mtimeMs: 1, faces: [] },
      { image: 'b.png', size: 20, mtimeMs: 2, faces: [] },
      { image: 'c.png', error: 'Input file "c.png": expected ..., found ...' },
      { image: 'b.png', error: 'now broken' },
    ].map((l) => JSON.stringify(l));
    const whole = `${lines.join('\n')}\n`;
    fs.writeFileSync(file, `${whole}{"image":"d.png","si`);
    const { done, validBytes } = await readDone(file);
    expect([...done]).toEqual([['a.png', { size: 10, mtimeMs: 1 }]]);
    expect(validBytes).toBe(Buffer.byteLength(whole));
  });

  it('a missing file is an empty start; a file that is not ours is refused, naming the line', async () => {
    expect(await readDone(path.join(tmp, 'none.jsonl'))).toEqual({ done: new Map(), validBytes: 0 });
    const file = path.join(tmp, 'other.jsonl');
    fs.writeFileSync(file, '{"image":"a.png","faces":[]}\nhello\n');
    await expect(readDone(file)).rejects.toThrow(/other\.jsonl line 2: not JSON/);
    fs.writeFileSync(file, '{"name":"a.png"}\n');
    await expect(readDone(file)).rejects.toThrow(/line 1: no "image"/);
  });

  it('an image is done only while its file has the recorded size and mtime', async () => {
    const img = path.join(tmp, 'x.png');
    fs.writeFileSync(img, 'abc');
    const stamp = (await stampOf(img))!;
    const other = path.join(tmp, 'y.png');
    const done = new Map([
      [img, stamp],
      [other, { size: 1, mtimeMs: 1 }],
    ]);
    expect(await notDone([img, other, 'missing.png'], done)).toEqual([other, 'missing.png']);
    fs.writeFileSync(img, 'abcd');
    expect(await notDone([img], done)).toEqual([img]);
  });
});

describe('the appending writer', () => {
  it('each line at once; resuming cuts a partial last line before appending', async () => {
    const file = path.join(tmp, 'w.jsonl');
    const w = await JsonlWriter.open(file, undefined, 0);
    await w.append({ image: 'a', faces: [] });
    // Written through at once (a killed process keeps it), before close.
    expect(fs.readFileSync(file, 'utf8')).toBe('{"image":"a","faces":[]}\n');
    await w.close();
    fs.appendFileSync(file, '{"image":"b","fa');
    const { validBytes } = await readDone(file);
    const again = await JsonlWriter.open(file, validBytes);
    await again.append({ image: 'c', faces: [] });
    await again.close();
    expect(fs.readFileSync(file, 'utf8')).toBe('{"image":"a","faces":[]}\n{"image":"c","faces":[]}\n');
    // Without resuming, the file starts anew.
    await (await JsonlWriter.open(file)).close();
    expect(fs.readFileSync(file, 'utf8')).toBe('');
  });
});
