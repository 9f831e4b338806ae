// Nothing the user had is lost: `convert --out D` replaces D only once the new conversion is
// complete, `detect --draw` never writes over an input or an earlier drawing, and `--json`
// keeps what was done when the run stops.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { runConvert } from '../converter/cli';
import { keySpecs } from './utils/formula';
import { SavedTensor, zipCheckpoint, zipRecordDataOffset } from './utils/torch_save';

const made: string[] = [];
function tmpDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'img2pose-safety-'));
  made.push(dir);
  return dir;
}
afterAll(() => made.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

/** Every file under `dir` (relative path -> contents), to compare a folder before and after. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of fs.readdirSync(dir, { recursive: true }) as string[]) {
    const p = path.join(dir, name);
    if (fs.statSync(p).isFile()) out[name] = fs.readFileSync(p).toString('base64');
  }
  return out;
}

async function convert(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await runConvert(argv, { stdout: { write: (s: string) => (out += s) }, stderr: { write: (s: string) => (err += s) } });
  return { code, out, err };
}

describe('convert --out D: D is replaced only by a complete conversion', () => {
  // A full-size ResNet-18 checkpoint in torch's zip layout, each tensor a constant (so deflate
  // shrinks its 170 MB to a few hundred KB); the bad copy has an invalid deflate block in the
  // last storage record, which the converter reaches only after writing almost every shard.
  const tensors: SavedTensor[] = keySpecs(18)
    .filter((k) => !k.name.endsWith('num_batches_tracked'))
    .map((k, i) => ({ name: k.name, shape: k.shape, data: new Float32Array(k.shape.reduce((a, b) => a * b, 1)).fill(((i % 13) + 1) / 16) }));
  let root: string;
  let good: string;
  let bad: string;

  beforeAll(() => {
    root = tmpDir();
    const zip = zipCheckpoint(tensors);
    good = path.join(root, 'good.pth');
    fs.writeFileSync(good, zip);
    const corrupt = zip.slice();
    corrupt[zipRecordDataOffset(corrupt, `archive/data/${tensors.length - 1}`)] |= 0x06; // BTYPE 11: reserved
    bad = path.join(root, 'bad.pth');
    fs.writeFileSync(bad, corrupt);
  });

  function oldFolder(): string {
    const d = path.join(root, `w${made.length}-${Math.random().toString(36).slice(2)}`);
    fs.mkdirSync(d);
    fs.writeFileSync(path.join(d, 'model.json'), '{"old": true}\n');
    fs.writeFileSync(path.join(d, 'group1-shard1of2.bin'), 'old shard 1');
    fs.writeFileSync(path.join(d, 'group1-shard2of2.bin'), 'old shard 2');
    fs.writeFileSync(path.join(d, 'NOTES.txt'), 'the user file');
    return d;
  }

  const leftovers = (): string[] => fs.readdirSync(root).filter((n) => n.startsWith('.'));

  it('a checkpoint that fails late leaves D exactly as it was (and no temporary folder)', async () => {
    const d = oldFolder();
    const before = snapshot(d);
    const r = await convert([bad, '--out', d]);
    expect(r.code).toBe(1);
    const errors = r.err.split('\n').filter((l) => l && !l.includes(': warning: '));
    expect(errors).toEqual([expect.stringMatching(/^img2pose convert: .*bad\.pth: truncated or corrupt zip archive \(invalid block type\)$/)]);
    expect(snapshot(d)).toEqual(before);
    expect(leftovers()).toEqual([]);
  });

  it('a good checkpoint replaces model.json and every old shard, keeps the other files', async () => {
    const d = oldFolder();
    const r = await convert([good, '--out', d]);
    expect(r.err).not.toMatch(/error/);
    expect(r.code).toBe(0);
    const names = fs.readdirSync(d).sort();
    expect(names).toContain('NOTES.txt');
    expect(names).not.toContain('group1-shard1of2.bin');
    expect(names.filter((n) => /^group1-shard\d+of41\.bin$/.test(n))).toHaveLength(41);
    expect(fs.readFileSync(path.join(d, 'NOTES.txt'), 'utf8')).toBe('the user file');
    const json = JSON.parse(fs.readFileSync(path.join(d, 'model.json'), 'utf8'));
    expect(json.format).toBe('img2pose-tfjs-weights');
    // the first tensor (conv1, a constant 1/16) opens the first shard
    const first = new Float32Array(fs.readFileSync(path.join(d, 'group1-shard1of41.bin')).buffer.slice(0, 16));
    expect(Array.from(first)).toEqual([1 / 16, 1 / 16, 1 / 16, 1 / 16]);
    expect(leftovers()).toEqual([]);
  });

  it('a new folder is created only on success', async () => {
    const d = path.join(root, 'fresh', 'weights');
    expect((await convert([bad, '--out', d])).code).toBe(1);
    expect(fs.existsSync(d)).toBe(false);
    expect((await convert([good, '--out', d])).code).toBe(0);
    expect(fs.existsSync(path.join(d, 'model.json'))).toBe(true);
    expect(fs.readdirSync(path.dirname(d))).toEqual(['weights']);
  });
});
