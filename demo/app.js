// The demo page: loads the detector from the weights served beside the page (or picked files),
// detects faces in opened / dropped images or the webcam, and draws boxes, keypoints and pose axes.
// URL parameters: backend, minSize, maxSize, threshold (defaults as the CLI's).
import { Img2Pose, drawFaces, loadWeightsFromFiles } from './img2pose.bundle.mjs';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const sizes = { minSize: Number(params.get('minSize') ?? 640), maxSize: Number(params.get('maxSize') ?? 1400) };
if (params.has('backend')) $('backend').value = params.get('backend');
if (params.has('threshold')) $('threshold').value = params.get('threshold');

let detector = null;
let weights = 'weights/';
let queue = Promise.resolve();
let webcam = null;

function setState(state, text) {
  document.body.dataset.state = state;
  $('status').textContent = text;
}

function threshold() {
  const t = Number($('threshold').value);
  return Number.isFinite(t) && t >= 0 && t <= 1 ? t : 0.5;
}

/** Runs page actions one at a time; errors are shown, never thrown away. */
function serial(action) {
  queue = queue.then(action).catch((e) => {
    console.error(e);
    setState('error', `error: ${e.message}`);
  });
  return queue;
}

async function describeWeights() {
  const config = await fetch('demo.json').then((r) => (r.ok ? r.json() : {})).catch(() => ({}));
  const notice = $('notice');
  if (typeof weights !== 'string') {
    notice.className = 'trained';
    notice.textContent = 'Running the weights you picked.';
  } else if (config.untrained) {
    notice.className = '';
    notice.innerHTML =
      'These are the <b>untrained test weights</b> (no trained weights ship with the package): the detections are ' +
      'meaningless; the page only shows the pipeline running. For real detections convert the official checkpoint ' +
      '(<code>npx img2pose convert img2pose_v1.pth --pose-mean … --pose-stddev … --out weights/img2pose_v1</code>), then ' +
      'run <code>npm run demo:web -- --weights weights/img2pose_v1</code>, or pick the converted folder\'s files above.';
  } else {
    notice.className = 'trained';
    notice.textContent = `Running the converted weights served at ${new URL(weights, location.href).href}.`;
  }
}

async function load() {
  setState('loading', 'loading weights and backend…');
  if (detector) await detector.dispose();
  detector = null;
  const t0 = performance.now();
  detector = await Img2Pose.load({ weights, backend: $('backend').value, ...sizes, scoreThreshold: 0 });
  $('active-backend').textContent = detector.backend;
  await describeWeights();
  setState('ready', `ready (loaded in ${Math.round(performance.now() - t0)} ms)`);
}

function show(canvas, source, width, height, faces) {
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(source, 0, 0, width, height);
  drawFaces(ctx, faces);
}

/** Detects `files` (File objects) as one call: one image, or a batch. */
async function detectFiles(files) {
  if (files.length === 0) return;
  if (!detector) await load();
  setState('busy', `detecting ${files.length} image(s)…`);
  const bytes = await Promise.all(files.map(async (f) => new Uint8Array(await f.arrayBuffer())));
  const t0 = performance.now();
  const perImage = await detector.detectFaces(bytes, { scoreThreshold: threshold() });
  const ms = performance.now() - t0;
  $('ms').textContent = `${Math.round(ms)} ms (${files.length} image${files.length > 1 ? 's' : ''})`;
  const results = files.map((f, i) => ({ image: f.name, faces: perImage[i] }));
  $('result').textContent = JSON.stringify(results, null, 1);
  $('gallery').textContent = '';
  for (const [i, f] of files.entries()) {
    const bitmap = await createImageBitmap(f);
    const canvas = i === 0 ? $('view') : $('gallery').appendChild(document.createElement('canvas'));
    show(canvas, bitmap, bitmap.width, bitmap.height, perImage[i]);
    bitmap.close();
  }
  window.demoResult = results;
  setState('done', `done: ${results.map((r) => r.faces.length).join(', ')} face(s)`);
  return results;
}

async function webcamLoop() {
  const video = $('video');
  while (webcam) {
    if (video.readyState >= 2) {
      const t0 = performance.now();
      const faces = await detector.detectFaces(video, { scoreThreshold: threshold() });
      $('ms').textContent = `${Math.round(performance.now() - t0)} ms / frame`;
      show($('view'), video, video.videoWidth, video.videoHeight, faces);
      $('result').textContent = JSON.stringify([{ image: 'webcam', faces }], null, 1);
    }
    await new Promise((r) => requestAnimationFrame(r));
  }
}

async function toggleWebcam() {
  if (webcam) {
    webcam.getTracks().forEach((t) => t.stop());
    webcam = null;
    $('webcam').textContent = 'Start webcam';
    setState('ready', 'webcam stopped');
    return;
  }
  if (!detector) await load();
  webcam = await navigator.mediaDevices.getUserMedia({ video: true });
  $('video').srcObject = webcam;
  await $('video').play();
  $('webcam').textContent = 'Stop webcam';
  setState('busy', 'webcam');
  webcamLoop().catch((e) => setState('error', `error: ${e.message}`));
}

/** Every file under a dropped folder (entries API), in path order. */
async function filesOf(entry) {
  if (entry.isFile) return [await new Promise((res, rej) => entry.file(res, rej))];
  const reader = entry.createReader();
  const out = [];
  for (;;) {
    const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
    if (batch.length === 0) break;
    for (const e of batch.sort((a, b) => a.name.localeCompare(b.name))) out.push(...(await filesOf(e)));
  }
  return out;
}

const isImage = (f) => /\.(jpe?g|png)$/i.test(f.name) || /^image\//.test(f.type);

$('file').addEventListener('change', (e) => serial(() => detectFiles([...e.target.files])));
$('example').addEventListener('click', () =>
  serial(async () => {
    const blob = await fetch('example.jpg').then((r) => r.blob());
    return detectFiles([new File([blob], 'example.jpg', { type: 'image/jpeg' })]);
  }),
);
$('webcam').addEventListener('click', () => serial(toggleWebcam));
$('backend').addEventListener('change', () => serial(load));
$('weights').addEventListener('change', (e) =>
  serial(async () => {
    const picked = await loadWeightsFromFiles([...e.target.files]);
    weights = picked;
    await load();
  }),
);
const drop = $('drop');
drop.addEventListener('dragover', (e) => {
  e.preventDefault();
  drop.classList.add('over');
});
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  const entries = [...e.dataTransfer.items].map((i) => i.webkitGetAsEntry?.()).filter(Boolean);
  serial(async () => {
    const files = entries.length ? (await Promise.all(entries.map(filesOf))).flat() : [...e.dataTransfer.files];
    return detectFiles(files.filter(isImage));
  });
});

// For scripts driving the page (and the tests): detect files, wait for the page to be idle.
window.demo = { detectFiles: (files) => serial(() => detectFiles(files)), idle: () => queue };
serial(load);
