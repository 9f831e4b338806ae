/**
 * Host time of the per-image stages around the network: RPN proposal filtering (the GPU path's
 * `candidatesOf` + `proposalsOfCandidates`, and the CPU path's `proposalsOf` on the whole head
 * output) and the ROI post-processing, replayed on inputs captured from real forwards.
 *
 *   npx tsc -p tsconfig.build.json
 *   node dist/bench/host_stages.js capture [--dir tmp/host_stages] [--weights tmp/formula_ckpt/formula.pth]
 *       (pose statistics: pose_mean.npy, pose_stddev.npy next to the weights)
 *   node dist/bench/host_stages.js [time] [--dir tmp/host_stages] [--runs 200] [--warmup 30] [--only piece,...]
 *
 * `capture` runs the network on the wasm backend on the photo (assets/teaser.jpg) and on the photo
 * resampled to the first sizes of the stream benchmarks (bench/stream_sizes.ts), all at 640/1400,
 * and saves each image's inputs of the host stages under --dir: the RPN head output, the GPU
 * preselection's result words for it (emulated: the same anchors, logits and deltas as
 * src/kernels/webgpu/rpn_candidates.ts selects, in a GPU-like order), and the post-processing
 * input. It checks that the candidates give the same proposals as the whole head output.
 *
 * `time` replays them: per piece, over --runs passes over every captured image (after --warmup
 * passes), the median pass's CPU and wall time and the fastest pass's wall time, in ms per image
 * (on a shared machine, CPU time is the steadier figure: it leaves out the time other processes
 * hold the cores), the teaser's own median, and a digest of the piece's outputs, which a change
 * that keeps the results bit-identical leaves unchanged.
 */
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { anchorsAt } from '../src/ops/anchors';
import { float32SortKey } from '../src/ops/nms';
import {
  candidateLayout,
  candidatesOf,
  CandidateLayout,
  filterProposals,
  headOf,
  ProposalJob,
  Proposals,
  proposalsOf,
  proposalsOfCandidates,
  rankedCandidatesOf,
  RECORD_WORDS,
  RPN_CONFIG,
  RpnCandidates,
  RpnHeadOutput,
  selectTopPerLevel,
} from '../src/ops/proposals';
import {
  BOX_NMS_THRESH,
  Candidates,
  finalNms,
  GlobalPoses,
  postprocessDetections,
  PostprocessInput,
  selectCandidates,
  transformPoseGlobalProjectBbox,
} from '../src/model/postprocess';
import { streamSizes } from './stream_sizes';

type Typed = Float32Array | Int32Array;

/** One captured image: its proposal job (whole head output), candidate words and post-processing input. */
interface Capture {
  name: string;
  job: ProposalJob;
  words: Int32Array;
  post: PostprocessInput;
}

const log = (s: string): void => void process.stderr.write(`${s}\n`);

function argValue(args: string[], name: string, fallback: string): string {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
}

// ---- storage: a JSON manifest per image and one raw file per array ----

interface StoredArray {
  file: string;
  type: 'f32' | 'i32';
}

function saveArray(dir: string, file: string, a: Typed): StoredArray {
  fs.writeFileSync(path.join(dir, file), new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
  return { file, type: a instanceof Float32Array ? 'f32' : 'i32' };
}

function loadArray(dir: string, s: StoredArray): Typed {
  const bytes = fs.readFileSync(path.join(dir, s.file));
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  return s.type === 'f32' ? new Float32Array(copy.buffer) : new Int32Array(copy.buffer);
}

function saveCapture(dir: string, c: Capture): void {
  const p = c.post;
  const manifest = {
    name: c.name,
    job: {
      levels: c.job.levels.map((l, i) => saveArray(dir, `${c.name}.level${i}.bin`, l)),
      levelSizes: c.job.levelSizes,
      image: c.job.image,
      paddedSize: c.job.paddedSize,
      imageSize: c.job.imageSize,
      config: c.job.config,
    },
    words: saveArray(dir, `${c.name}.words.bin`, c.words),
    post: {
      proposals: saveArray(dir, `${c.name}.proposals.bin`, p.proposals),
      classLogits: saveArray(dir, `${c.name}.logits.bin`, p.classLogits),
      dofRegression: saveArray(dir, `${c.name}.dofs.bin`, p.dofRegression),
      imageSize: p.imageSize,
      originalSize: p.originalSize,
      poseMean: Array.from(p.poseMean),
      poseStddev: Array.from(p.poseStddev),
    },
  };
  fs.writeFileSync(path.join(dir, `${c.name}.json`), JSON.stringify(manifest));
}

function loadCaptures(dir: string): Capture[] {
  const names = fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort();
  if (names.length === 0) throw new Error(`no captures in ${dir}: run "capture" first`);
  return names.map((f) => {
    const m = JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8'));
    const job: ProposalJob = { ...m.job, levels: m.job.levels.map((s: StoredArray) => loadArray(dir, s)) };
    const post: PostprocessInput = {
      ...m.post,
      proposals: loadArray(dir, m.post.proposals),
      classLogits: loadArray(dir, m.post.classLogits),
      dofRegression: loadArray(dir, m.post.dofRegression),
      poseMean: Float32Array.from(m.post.poseMean),
      poseStddev: Float32Array.from(m.post.poseStddev),
    };
    return { name: m.name, job, words: loadArray(dir, m.words) as Int32Array, post };
  });
}

// ---- the GPU preselection, emulated ----

/** The WGSL sortKey of src/kernels/webgpu/rpn_candidates.ts: float32SortKey with -0 as +0. */
function gpuSortKey(bits: number): number {
  return bits === 0x80000000 ? 0x80000000 : float32SortKey(bits);
}

/**
 * The result words the GPU preselection gives for a single image's head output: per level, every
 * anchor whose key's top 16 bits are at least those of the k-th largest key, as (level-local
 * index, logit, 4 deltas) records. The GPU appends them through an atomic counter; here they come
 * in anchor order shuffled within blocks of 4096 anchors (workgroups run roughly in order, their
 * threads in any order).
 */
function emulateCandidateWords(head: RpnHeadOutput, layout: CandidateLayout): Int32Array {
  const words = new Int32Array(layout.words);
  const floats = new Float32Array(words.buffer);
  const bits = new Uint32Array(head.objectness.buffer, head.objectness.byteOffset, head.objectness.length);
  let seed = 12345;
  const random = (): number => {
    seed = (Math.imul(1664525, seed) + 1013904223) >>> 0;
    return seed / 2 ** 32;
  };
  let start = 0;
  head.perLevel.forEach((count, level) => {
    const histogram = new Int32Array(65536);
    for (let i = 0; i < count; i++) histogram[gpuSortKey(bits[start + i]) >>> 16]++;
    let digit = 65535;
    let above = histogram[digit];
    while (above < layout.k[level]) above += histogram[--digit];
    const chosen: number[] = [];
    for (let i = 0; i < count; i++) if (gpuSortKey(bits[start + i]) >>> 16 >= digit) chosen.push(i);
    const block = 4096;
    const order = chosen.map((i) => ({ i, key: Math.floor(i / block) + random() }));
    order.sort((a, b) => a.key - b.key);
    words[level] = order.length;
    order.slice(0, layout.capacity[level]).forEach(({ i }, c) => {
      const r = layout.base[level] + c * RECORD_WORDS;
      words[r] = i;
      floats[r + 1] = head.objectness[start + i];
      for (let d = 0; d < 4; d++) floats[r + 2 + d] = head.deltas[(start + i) * 4 + d];
    });
    start += count;
  });
  return words;
}

// ---- capture ----

async function capture(args: string[]): Promise<void> {
  const dir = argValue(args, '--dir', 'tmp/host_stages');
  const weightsPath = argValue(args, '--weights', 'tmp/formula_ckpt/formula.pth');
  const count = Number(argValue(args, '--stream-images', '5'));
  // tfjs only here: the timing path imports plain-array code alone.
  const tf = await import('@tensorflow/tfjs');
  const { selectBackend } = await import('../src/runtime/backend');
  const { loadWeights } = await import('../src/io/weights_io');
  const { disposeWeights } = await import('../src/model/weights');
  const { createRuntime } = await import('../src/runtime/runtime');
  const { IN_THREAD } = await import('../src/model/runtime');
  const { Img2PoseModel } = await import('../src/model/model');
  const { decodeNetworkImage } = await import('../src/io/images');
  await selectBackend('wasm');
  fs.mkdirSync(dir, { recursive: true });
  const statistics = path.dirname(weightsPath);
  const weights = await loadWeights(weightsPath, {
    poseMean: path.join(statistics, 'pose_mean.npy'),
    poseStddev: path.join(statistics, 'pose_stddev.npy'),
  });
  let jobs: ProposalJob[] = [];
  let posts: PostprocessInput[] = [];
  const recorder = {
    ...IN_THREAD,
    proposals: async (js: ProposalJob[]) => ((jobs = js), IN_THREAD.proposals(js)),
    postprocess: async (ps: PostprocessInput[]) => ((posts = ps), IN_THREAD.postprocess(ps)),
  };
  const model = new Img2PoseModel(weights, { ...createRuntime({ backend: tf.getBackend() }), host: recorder });
  disposeWeights(weights);
  const photo = await decodeNetworkImage('assets/teaser.jpg');
  if (photo instanceof tf.Tensor) throw new Error('expected the decoded photo as bytes');
  const images: Array<{ name: string; rgb: Uint8Array; height: number; width: number }> = [
    { name: 'teaser', rgb: rgbOf(photo.data, photo.channels), height: photo.height, width: photo.width },
  ];
  for (const [h, w] of streamSizes(count)) {
    images.push({
      name: `stream_${h}x${w}`,
      rgb: resample(rgbOf(photo.data, photo.channels), photo.height, photo.width, h, w),
      height: h,
      width: w,
    });
  }
  for (const image of images) {
    const t0 = performance.now();
    await model.predict([{ data: image.rgb, height: image.height, width: image.width, channels: 3 }], { minSize: 640, maxSize: 1400 });
    const job = jobs[0];
    const layout = candidateLayout([job.paddedSize], job.config.preNmsTopN);
    const words = emulateCandidateWords(headOf(job), layout);
    const candidates = candidatesOf(words, layout, 0);
    if (!candidates) throw new Error(`${image.name}: the candidates overflow their slots`);
    const viaCandidates = proposalsOfCandidates(candidates, job.paddedSize, job.imageSize, job.config);
    const viaHead = proposalsOf(job);
    if (digest([viaCandidates.boxes, viaCandidates.scores]) !== digest([viaHead.boxes, viaHead.scores])) {
      throw new Error(`${image.name}: the candidates' proposals differ from the head output's`);
    }
    saveCapture(dir, { name: image.name, job: { ...job, levels: job.levels.map((l) => l.slice()) }, words, post: posts[0] });
    log(`${image.name}: ${image.height}x${image.width}, ${viaHead.scores.length} proposals, ${(performance.now() - t0).toFixed(0)} ms`);
  }
  await model.dispose();
}

/** RGB samples of an interleaved image with `channels` per pixel. */
function rgbOf(data: Uint8Array | Uint8ClampedArray, channels: number): Uint8Array {
  if (channels === 3) return Uint8Array.from(data);
  const n = data.length / channels;
  const out = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) for (let c = 0; c < 3; c++) out[i * 3 + c] = data[i * channels + c];
  return out;
}

/** `src` (HWC RGB) resampled to h x w, nearest neighbour, as the stream benchmarks make their images. */
function resample(src: Uint8Array, sh: number, sw: number, h: number, w: number): Uint8Array {
  const out = new Uint8Array(h * w * 3);
  for (let y = 0; y < h; y++) {
    const sy = Math.min(sh - 1, Math.floor(((y + 0.5) * sh) / h));
    for (let x = 0; x < w; x++) {
      const sx = Math.min(sw - 1, Math.floor(((x + 0.5) * sw) / w));
      out.set(src.subarray((sy * sw + sx) * 3, (sy * sw + sx) * 3 + 3), (y * w + x) * 3);
    }
  }
  return out;
}

// ---- timing ----

/** sha256 (first 16 hex digits) of the arrays' bytes, in order. */
function digest(arrays: ArrayBufferView[]): string {
  const h = createHash('sha256');
  for (const a of arrays) {
    h.update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
    h.update(String(a.byteLength));
  }
  return h.digest('hex').slice(0, 16);
}

interface Piece {
  name: string;
  /** One image's work; returns the arrays the digest covers. */
  run: (c: Capture, prepared: Prepared) => ArrayBufferView[];
}

/** What a piece needs from earlier pieces, computed once before timing. */
interface Prepared {
  layout: CandidateLayout;
  /** The result words as the GPU ranks them (rpnCandidates with `ranked`), emulated. */
  rankedWords: Int32Array;
  candidates: RpnCandidates;
  anchors: Float32Array;
  head: RpnHeadOutput;
  /** The post-processing's first two stages' outputs. */
  selected: Candidates;
  posed: GlobalPoses;
}

const proposalArrays = (p: Proposals): ArrayBufferView[] => [p.boxes, p.scores];

const PIECES: Piece[] = [
  { name: 'candidatesOf', run: (c, p) => candidateArrays(candidatesOf(c.words, p.layout, 0)) },
  {
    name: 'anchorsAt (candidates)',
    run: (c, p) => [anchorsAt(c.job.paddedSize[0], c.job.paddedSize[1], p.candidates.perLevel, p.candidates.index)],
  },
  { name: 'selectTopPerLevel (candidates)', run: (_, p) => [selectTopPerLevel(p.head.objectness, p.head.perLevel, RPN_CONFIG.preNmsTopN)] },
  {
    name: 'filterProposals (candidates)',
    run: (c, p) => proposalArrays(filterProposals(p.head, p.anchors, c.job.imageSize, c.job.config)),
  },
  {
    name: 'proposalsOfCandidates',
    run: (c, p) => proposalArrays(proposalsOfCandidates(p.candidates, c.job.paddedSize, c.job.imageSize, c.job.config)),
  },
  {
    name: 'GPU path proposals (candidatesOf + proposalsOfCandidates)',
    run: (c, p) => {
      const candidates = candidatesOf(c.words, p.layout, 0);
      if (!candidates) throw new Error('candidates overflow');
      return proposalArrays(proposalsOfCandidates(candidates, c.job.paddedSize, c.job.imageSize, c.job.config));
    },
  },
  { name: 'rankedCandidatesOf', run: (_, p) => candidateArrays(rankedCandidatesOf(p.rankedWords, p.layout, 0)) },
  {
    name: 'GPU path proposals, ranked on the GPU (rankedCandidatesOf + proposalsOfCandidates)',
    run: (c, p) => {
      const candidates = rankedCandidatesOf(p.rankedWords, p.layout, 0);
      if (!candidates) throw new Error('candidates overflow');
      return proposalArrays(proposalsOfCandidates(candidates, c.job.paddedSize, c.job.imageSize, c.job.config));
    },
  },
  { name: 'CPU path proposals (proposalsOf, whole head)', run: (c) => proposalArrays(proposalsOf(c.job)) },
  {
    name: 'selectCandidates',
    run: (c) => {
      const s = selectCandidates(c.post.proposals, c.post.classLogits, c.post.dofRegression, c.post.imageSize);
      return [s.boxes, s.scores, s.dofs];
    },
  },
  {
    name: 'transformPoseGlobalProjectBbox',
    run: (c, { selected: s }) => {
      const g = transformPoseGlobalProjectBbox(s.boxes, s.dofs, c.post.poseMean, c.post.poseStddev, c.post.imageSize);
      return [g.boxes, g.dofs];
    },
  },
  { name: 'finalNms', run: (_, p) => [finalNms(p.posed.boxes, p.selected.scores, BOX_NMS_THRESH)] },
  {
    name: 'postprocessDetections',
    run: (c) => {
      const d = postprocessDetections(c.post);
      return [d.boxes, d.scores, d.dofs];
    },
  },
];

function candidateArrays(c: RpnCandidates | null): ArrayBufferView[] {
  if (!c) throw new Error('candidates overflow');
  return [Int32Array.from(c.perLevel), c.index, c.objectness, c.deltas];
}

/** What the GPU's ranking pass makes of the result words: each slot's records in rank order (logit descending, -0 as +0, equal logits by anchor, NaN last). */
function rankOnHost(words: Int32Array, layout: CandidateLayout): Int32Array {
  const out = Int32Array.from(words);
  const key = (bits: number): number => ((bits & 0x7fffffff) > 0x7f800000 ? 0 : bits === 0x80000000 ? 0x80000000 : float32SortKey(bits));
  for (let slot = 0; slot < layout.images * layout.levels; slot++) {
    const count = Math.min(words[slot], layout.capacity[slot]);
    const base = layout.base[slot];
    const order = Array.from({ length: count }, (_, i) => i);
    const at = (i: number): [number, number] => [key(words[base + i * RECORD_WORDS + 1] >>> 0), words[base + i * RECORD_WORDS]];
    order.sort((i, j) => {
      const [ki, ai] = at(i);
      const [kj, aj] = at(j);
      return ki !== kj ? kj - ki : ai - aj;
    });
    order.forEach((i, r) => out.set(words.subarray(base + i * RECORD_WORDS, base + (i + 1) * RECORD_WORDS), base + r * RECORD_WORDS));
  }
  return out;
}

function prepare(c: Capture): Prepared {
  const layout = candidateLayout([c.job.paddedSize], c.job.config.preNmsTopN);
  const rankedWords = rankOnHost(c.words, layout);
  const candidates = candidatesOf(c.words, layout, 0);
  if (!candidates) throw new Error(`${c.name}: the candidates overflow their slots`);
  const anchors = anchorsAt(c.job.paddedSize[0], c.job.paddedSize[1], candidates.perLevel, candidates.index);
  const head = { objectness: candidates.objectness, deltas: candidates.deltas, perLevel: candidates.perLevel };
  const selected = selectCandidates(c.post.proposals, c.post.classLogits, c.post.dofRegression, c.post.imageSize);
  const posed = transformPoseGlobalProjectBbox(selected.boxes, selected.dofs, c.post.poseMean, c.post.poseStddev, c.post.imageSize);
  return { layout, rankedWords, candidates, anchors, head, selected, posed };
}

/** CPU time of this process so far, in ms: unlike wall time, it leaves out the time other processes hold the cores. */
function cpuMs(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
}

/**
 * Times `piece` over the images: ms per image of the median pass (wall and CPU time) and of the
 * fastest pass (wall), and the teaser's median (CPU).
 */
function timePiece(
  piece: Piece,
  captures: Capture[],
  prepared: Prepared[],
  runs: number,
  warmup: number,
): Record<'wall' | 'fastest' | 'cpu' | 'teaser', number> {
  for (let r = 0; r < warmup; r++) captures.forEach((c, i) => piece.run(c, prepared[i]));
  const wall: number[] = [];
  const cpu: number[] = [];
  const teaser: number[] = [];
  for (let r = 0; r < runs; r++) {
    const w0 = performance.now();
    const c0 = cpuMs();
    captures.forEach((c, i) => {
      const t0 = i === 0 ? cpuMs() : 0;
      piece.run(c, prepared[i]);
      if (i === 0) teaser.push(cpuMs() - t0);
    });
    cpu.push((cpuMs() - c0) / captures.length);
    wall.push((performance.now() - w0) / captures.length);
  }
  return { wall: median(wall), fastest: Math.min(...wall), cpu: median(cpu), teaser: median(teaser) };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function time(args: string[]): void {
  const dir = argValue(args, '--dir', 'tmp/host_stages');
  const runs = Number(argValue(args, '--runs', '200'));
  const warmup = Number(argValue(args, '--warmup', '30'));
  const only = argValue(args, '--only', '')
    .split(',')
    .filter((s) => s);
  const captures = loadCaptures(dir).sort((a, b) => (a.name === 'teaser' ? -1 : b.name === 'teaser' ? 1 : a.name.localeCompare(b.name)));
  const prepared = captures.map(prepare);
  log(`images: ${captures.map((c) => `${c.name} (${c.job.imageSize.join('x')})`).join(', ')}`);
  log(`${runs} passes after ${warmup} warm-up passes`);
  const rows: string[] = [];
  for (const piece of PIECES) {
    if (only.length && !only.some((o) => piece.name.includes(o))) continue;
    const out = digest(captures.flatMap((c, i) => piece.run(c, prepared[i])));
    const t = timePiece(piece, captures, prepared, runs, warmup);
    rows.push(`| ${piece.name} | ${t.cpu.toFixed(3)} | ${t.wall.toFixed(3)} | ${t.fastest.toFixed(3)} | ${t.teaser.toFixed(3)} | ${out} |`);
    log(rows[rows.length - 1]);
  }
  const header =
    '| piece | CPU ms/image (median pass) | wall ms/image (median pass) | wall ms/image (fastest pass) | CPU ms teaser (median) | digest |';
  console.log([header, '|---|---:|---:|---:|---:|---|', ...rows].join('\n'));
}

const [mode, ...rest] = process.argv.slice(2);
if (mode === 'capture') {
  capture(rest).catch((e) => {
    console.error(e);
    process.exit(1);
  });
} else {
  time(mode === 'time' || mode === undefined ? rest : [mode, ...rest]);
}
