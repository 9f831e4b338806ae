/**
 * Reading `torch.save` checkpoints without Python.
 *
 * Two container formats exist:
 *  - zip (torch >= 1.6): `<top>/data.pkl` is the pickled object, each storage is the entry
 *    `<top>/data/<key>` (raw little-endian bytes); `<top>` is whatever the archive was named.
 *  - legacy (older torch or `_use_new_zipfile_serialization=False`): back-to-back pickles —
 *    magic number, protocol version, sys_info, the object itself, the sorted list of storage
 *    keys — then for each key an 8-byte element count followed by the raw bytes.
 * In both, tensors are pickled as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
 * with the storage given as a persistent id ('storage', <type>, key, location, numel[, view]).
 */
import { createHash } from 'crypto';
import { FileReadError, openRegularFile, readRegularFile } from './safe_read';
import { CheckpointError } from './errors';
import { HostValue, PickleError, PyDict, PyGlobal, PyObject, PyTuple, PyValue, UnpickleHooks, pyTypeName, unpickle } from './pickle';
import { ZipArchive, ZipRecord, fileSource } from './zip';
import { DTYPE_BYTES, TorchDtype, TensorValues, allocValues, floatValuesToFloat32, gatherStrided, numelOf, typedView } from './tensor_data';

/** Storage classes and dtype names as they appear in pickles (`torch.FloatStorage`, `torch.float32`). */
const STORAGE_DTYPES: Record<string, TorchDtype> = {
  FloatStorage: 'float32',
  DoubleStorage: 'float64',
  HalfStorage: 'float16',
  BFloat16Storage: 'bfloat16',
  LongStorage: 'int64',
  IntStorage: 'int32',
  ShortStorage: 'int16',
  CharStorage: 'int8',
  ByteStorage: 'uint8',
  BoolStorage: 'bool',
  float32: 'float32',
  float: 'float32',
  float64: 'float64',
  double: 'float64',
  float16: 'float16',
  half: 'float16',
  bfloat16: 'bfloat16',
  int64: 'int64',
  long: 'int64',
  int32: 'int32',
  int: 'int32',
  int16: 'int16',
  short: 'int16',
  int8: 'int8',
  uint8: 'uint8',
  bool: 'bool',
};

const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;
const LEGACY_PROTOCOL = 1001;

export class TorchStorage extends HostValue {
  /** Raw little-endian bytes, once the container has supplied them. */
  bytes: Uint8Array | undefined;
  /** Zip storages are extracted on demand (and again after `release()`), one at a time. */
  fetch: (() => Uint8Array) | undefined;
  /** Legacy-format storage views: a window of another storage. */
  base: { storage: TorchStorage; elementOffset: number } | undefined;
  private values: TensorValues | undefined;
  private floats: Float32Array | undefined;
  constructor(
    readonly key: string,
    readonly dtype: TorchDtype,
    readonly numel: number,
  ) {
    super();
  }
  /** Element values (typed view of the bytes, cached: views share it). */
  data(): TensorValues {
    if (this.values) return this.values;
    if (this.base) {
      const root = this.base.storage.data();
      this.values = root.subarray(this.base.elementOffset, this.base.elementOffset + this.numel);
    } else {
      if (!this.bytes && this.fetch) this.bytes = this.fetch();
      if (!this.bytes) throw new Error(`storage ${this.key} was not loaded`);
      this.values = typedView(this.bytes, this.dtype);
    }
    return this.values;
  }
  /** The values as float32 (a view for float32 storages; converted once otherwise). */
  floatData(): Float32Array {
    this.floats ??= floatValuesToFloat32(this.data(), this.dtype);
    return this.floats;
  }
  /** Lets the decoded data go; an on-demand storage is extracted again if needed later. */
  release(): void {
    this.values = undefined;
    this.floats = undefined;
    if (this.fetch) this.bytes = undefined;
  }
}

/** A dense tensor as torch pickles it: a strided view into a storage. */
export class TorchTensor extends HostValue {
  constructor(
    readonly storage: TorchStorage,
    readonly offset: number,
    readonly shape: number[],
    readonly strides: number[],
  ) {
    super();
  }
  get dtype(): TorchDtype {
    return this.storage.dtype;
  }
  get numel(): number {
    return numelOf(this.shape);
  }
  /** Row-major copy of the values, in the checkpoint's dtype. */
  contiguous(): TensorValues {
    const out = allocValues(this.dtype, this.numel);
    gatherStrided<number | bigint>(this.storage.data(), this.offset, this.shape, this.strides, out, 0, 0, this.numel);
    return out;
  }
}

export type CheckpointFormat = 'zip' | 'legacy';

export interface LoadedCheckpoint {
  file: string;
  format: CheckpointFormat;
  /** The file's sha256 (hex), unless loaded with `{ hash: false }`. */
  sha256?: string;
  byteLength: number;
  /** `fpn_model` in checkpoint order, keys with upstream's one `module.` prefix stripped. */
  stateDict: Map<string, TorchTensor>;
  /** The other top-level entries (optimizer, epoch, ...), which are ignored. */
  otherKeys: string[];
  /** Closes the file that storages are read from (`fromFile`); a no-op otherwise. */
  close(): void;
}

interface FpnModel {
  stateDict: Map<string, TorchTensor>;
  otherKeys: string[];
}

function isIntTuple(v: PyValue): v is PyTuple {
  return v instanceof PyTuple && v.items.every(isCount);
}

/** A size, stride, offset or element count: a non-negative integer that float64 holds exactly. */
function isCount(x: PyValue | undefined): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

/** Element sizes of storage classes we do not decode, so the legacy reader can step over their data. */
const OTHER_STORAGE_BYTES: Record<string, number> = {
  ComplexFloatStorage: 8,
  ComplexDoubleStorage: 16,
  QInt8Storage: 1,
  QUInt8Storage: 1,
  QInt32Storage: 4,
  QUInt4x2Storage: 1,
  QUInt2x4Storage: 1,
};

/** A storage class we cannot decode: fine in an optimizer state, refused in `fpn_model`. */
class UnsupportedStorage extends HostValue {
  constructor(
    readonly typeName: string,
    /** bytes per element, when known */
    readonly elementBytes: number | undefined,
  ) {
    super();
  }
}

/** Every storage a pickle names, by key. */
type StorageTable = Map<string, TorchStorage | UnsupportedStorage>;

class UnsupportedTensor extends HostValue {
  constructor(readonly typeName: string) {
    super();
  }
}

/** Pickle hooks shared by both formats; `storages` collects every root storage the pickle names. */
function torchHooks(storages: StorageTable): UnpickleHooks {
  const views = new Map<string, TorchStorage>();
  const rebuild = (callable: PyGlobal, args: PyValue[]): PyValue | undefined => {
    const where = callable.qualifiedName;
    if (where === 'torch._utils._rebuild_tensor_v2' || where === 'torch._utils._rebuild_tensor') {
      const [storage, offset, size, stride] = args;
      if (storage instanceof UnsupportedStorage) return new UnsupportedTensor(storage.typeName);
      if (!(storage instanceof TorchStorage) || !isIntTuple(size) || !isIntTuple(stride)) {
        throw new PickleError(`malformed ${callable.name} arguments`, 0);
      }
      if (!isCount(offset)) throw new PickleError(`a tensor with storage offset ${String(offset)} (expected a non-negative integer)`, 0);
      return new TorchTensor(storage, offset, size.items as number[], stride.items as number[]);
    }
    if (where === 'torch._utils._rebuild_parameter' || where === 'torch._utils._rebuild_parameter_with_state') {
      return args[0] ?? null;
    }
    if (where === 'torch._tensor._rebuild_from_type_v2' || where === 'torch._tensor._rebuild_from_type') {
      // (func, type, args, state): a Tensor subclass; the data is func(*args)
      const [func, , inner] = args;
      if (func instanceof PyGlobal && inner instanceof PyTuple) return rebuild(func, inner.items);
    }
    return undefined;
  };
  const persistentLoad = (pid: PyValue): PyValue => {
    if (!(pid instanceof PyTuple) || pid.items[0] !== 'storage') {
      throw new PickleError(`unknown persistent id (${pyTypeName(pid)})`, 0);
    }
    const [, type, key, , numel, view] = pid.items;
    if (!(type instanceof PyGlobal) || typeof key !== 'string' || !isCount(numel)) {
      throw new PickleError('malformed storage reference', 0);
    }
    const dtype = type.module === 'torch' ? STORAGE_DTYPES[type.name] : undefined;
    let storage = storages.get(key);
    if (!storage) {
      storage = dtype === undefined ? new UnsupportedStorage(type.qualifiedName, OTHER_STORAGE_BYTES[type.name]) : new TorchStorage(key, dtype, numel);
      storages.set(key, storage);
    }
    if (storage instanceof UnsupportedStorage || dtype === undefined) return storage;
    if (view instanceof PyTuple) {
      // legacy storage view: (view_key, element offset, element count) into the root storage
      const [viewKey, viewOffset, viewSize] = view.items;
      if (typeof viewKey !== 'string' || !isCount(viewOffset) || !isCount(viewSize)) {
        throw new PickleError('malformed storage view', 0);
      }
      if (viewOffset + viewSize > storage.numel) {
        throw new PickleError(
          `storage view ${viewKey} covers elements ${viewOffset}..${viewOffset + viewSize} of storage ${key}, which has ${storage.numel}`,
          0,
        );
      }
      let v = views.get(viewKey);
      if (!v) {
        v = new TorchStorage(viewKey, dtype, viewSize);
        v.base = { storage, elementOffset: viewOffset };
        views.set(viewKey, v);
      }
      return v;
    }
    return storage;
  };
  return { reduce: rebuild, persistentLoad };
}

function readPickle(file: string, data: Uint8Array, start: number, hooks: UnpickleHooks, what: string) {
  try {
    return unpickle(data, start, hooks);
  } catch (e) {
    if (!(e instanceof PickleError)) throw e;
    throw new CheckpointError(file, `corrupt pickle data: ${e.message} (in the ${what})`);
  }
}

function startsWith(bytes: Uint8Array, prefix: number[]): boolean {
  return prefix.every((b, i) => bytes[i] === b);
}

/** Storages reachable from `fpn_model`: the only ones whose bytes we need. */
function fpnStorages(stateDict: Map<string, TorchTensor>): Set<TorchStorage> {
  const s = new Set<TorchStorage>();
  for (const t of stateDict.values()) s.add(t.storage.base ? t.storage.base.storage : t.storage);
  return s;
}

function zipProblem(file: string, e: unknown): CheckpointError {
  if (e instanceof CheckpointError) return e;
  return new CheckpointError(file, `truncated or corrupt zip archive (${e instanceof Error ? e.message : String(e)})`);
}

/** Largest data.pkl read: an img2pose checkpoint's is tens of KB, with an optimizer state a few MB. */
export const MAX_PICKLE_BYTES = 64 * 1024 * 1024;

/**
 * A storage may hold a little more than its tensors use (views share storages), but not much:
 * its declared size is what gets inflated, so a crafted size would cost that much memory.
 */
function storageLimit(elementsUsed: number): number {
  return 2 * elementsUsed + 1024;
}

/** Elements of each storage that the tensors of `stateDict` use (the sum of their sizes). */
function elementsUsed(stateDict: Map<string, TorchTensor>): Map<TorchStorage, number> {
  const used = new Map<TorchStorage, number>();
  for (const t of stateDict.values()) used.set(t.storage, (used.get(t.storage) ?? 0) + t.numel);
  return used;
}

function readZip(file: string, source: Uint8Array | ZipArchive): FpnModel {
  let archive: ZipArchive;
  try {
    archive = source instanceof ZipArchive ? source : ZipArchive.open(source);
  } catch (e) {
    throw zipProblem(file, e);
  }
  const names = [...archive.records.keys()];
  // the record sits in one top folder whose name varies; pick the shallowest data.pkl
  const pkl = names.filter((n) => /(^|\/)data\.pkl$/.test(n)).sort((a, b) => a.split('/').length - b.split('/').length)[0];
  if (pkl === undefined) throw new CheckpointError(file, 'zip archive has no data.pkl: not a PyTorch checkpoint');
  const top = pkl.slice(0, pkl.length - 'data.pkl'.length);
  const read = (name: string, maxBytes: number, into?: Uint8Array): Uint8Array => {
    try {
      return archive.read(archive.records.get(name) as ZipRecord, maxBytes, into);
    } catch (e) {
      throw zipProblem(file, e);
    }
  };
  if (archive.records.has(`${top}byteorder`)) {
    const byteorder = read(`${top}byteorder`, 64);
    if (Buffer.from(byteorder).toString('latin1').trim() !== 'little') {
      throw new CheckpointError(file, 'big-endian checkpoints are not supported');
    }
  }
  const storages: StorageTable = new Map();
  const { value: root } = readPickle(file, read(pkl, MAX_PICKLE_BYTES), 0, torchHooks(storages), `${pkl} record`);
  const { stateDict, otherKeys } = takeFpnModel(file, root);

  // Check every needed record's size now; inflate each only when it is converted, so memory
  // holds the archive plus one storage instead of the archive plus a copy of everything.
  const reuse = new ScratchReuse();
  const used = elementsUsed(stateDict);
  for (const storage of fpnStorages(stateDict)) {
    const name = `${top}data/${storage.key}`;
    const record = archive.records.get(name);
    if (record === undefined) throw new CheckpointError(file, `zip archive lacks the storage record ${name}`);
    const elementBytes = DTYPE_BYTES[storage.dtype];
    const expected = storage.numel * elementBytes;
    const limit = storageLimit(used.get(storage) ?? 0);
    if (storage.numel > limit) {
      throw new CheckpointError(
        file,
        `storage ${storage.key} declares ${storage.numel} elements but its tensors use ${used.get(storage) ?? 0} (corrupt or crafted checkpoint)`,
      );
    }
    if (record.size < expected) {
      throw new CheckpointError(file, `storage record ${name} is truncated: expected ${expected} bytes, found ${record.size}`);
    }
    const maxBytes = Math.max(expected, limit * elementBytes);
    storage.fetch = archive.fromFile ? () => reuse.read(storage, record, () => read(name, maxBytes), (into) => read(name, maxBytes, into)) : () => read(name, maxBytes);
  }
  return { stateDict, otherKeys };
}

/**
 * From a file, a storage's bytes are read into one buffer that serves storage after storage as
 * long as each is released before the next is read (a conversion goes storage by storage): a new
 * buffer per storage would leave the whole file's worth of garbage behind, which is kept until
 * the next full garbage collection. A storage read while the previous one is still held gets a
 * buffer of its own.
 */
class ScratchReuse {
  private buffer: Uint8Array | undefined;
  private holder: TorchStorage | undefined;

  read(storage: TorchStorage, record: ZipRecord, own: () => Uint8Array, into: (buffer: Uint8Array) => Uint8Array): Uint8Array {
    // A stored record is read as it is; one to inflate gets its own buffer from zlib anyway.
    if (record.method !== 0 || (this.holder !== undefined && this.holder.bytes !== undefined)) return own();
    if (this.buffer === undefined || this.buffer.length < record.size) this.buffer = new Uint8Array(record.size);
    const bytes = into(this.buffer.subarray(0, record.size));
    this.holder = storage;
    return bytes;
  }
}

function readLegacy(file: string, buf: Uint8Array): FpnModel {
  const magic = readPickle(file, buf, 0, {}, 'legacy header');
  if (magic.value !== LEGACY_MAGIC) {
    throw new CheckpointError(file, 'not a PyTorch checkpoint: a pickle, but without the torch.save legacy magic number');
  }
  const proto = readPickle(file, buf, magic.end, {}, 'legacy header');
  if (proto.value !== LEGACY_PROTOCOL) {
    throw new CheckpointError(file, `unsupported legacy checkpoint protocol version ${String(proto.value)}`);
  }
  const sysInfo = readPickle(file, buf, proto.end, {}, 'legacy header');
  if (sysInfo.value instanceof PyDict && sysInfo.value.get('little_endian') === false) {
    throw new CheckpointError(file, 'big-endian checkpoints are not supported');
  }
  const storages: StorageTable = new Map();
  const main = readPickle(file, buf, sysInfo.end, torchHooks(storages), 'checkpoint object');
  const { stateDict, otherKeys } = takeFpnModel(file, main.value);
  const keyList = readPickle(file, buf, main.end, {}, 'storage key list');
  if (!Array.isArray(keyList.value) || !keyList.value.every((k) => typeof k === 'string')) {
    throw new CheckpointError(file, 'corrupt legacy checkpoint: the storage key list is not a list of strings');
  }
  const wanted = fpnStorages(stateDict);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let pos = keyList.end;
  for (const key of keyList.value as string[]) {
    const storage = storages.get(key);
    if (!storage) throw new CheckpointError(file, `corrupt legacy checkpoint: storage ${key} is not referenced`);
    if (pos + 8 > buf.length) {
      throw new CheckpointError(file, `truncated: the data of storage ${key} is missing (file ends at byte ${buf.length})`);
    }
    const count = Number(view.getBigInt64(pos, true));
    if (storage instanceof UnsupportedStorage) {
      if (storage.elementBytes === undefined) {
        // its size is unknown, so nothing after it can be located; fine if nothing after it is needed
        if ([...wanted].every((w) => w.bytes)) break;
        throw new CheckpointError(file, `cannot step over the data of storage ${key} (unsupported type ${storage.typeName})`);
      }
      const skip = count * storage.elementBytes;
      if (count < 0 || pos + 8 + skip > buf.length) {
        throw new CheckpointError(file, `truncated: storage ${key} needs ${skip} bytes at byte ${pos + 8}, the file ends at byte ${buf.length}`);
      }
      pos += 8 + skip;
      continue;
    }
    const size = count * DTYPE_BYTES[storage.dtype];
    pos += 8;
    if (count < 0 || pos + size > buf.length) {
      throw new CheckpointError(
        file,
        `truncated: storage ${key} needs ${size} bytes at byte ${pos}, the file ends at byte ${buf.length}`,
      );
    }
    if (count < storage.numel) {
      throw new CheckpointError(file, `corrupt legacy checkpoint: storage ${key} holds ${count} elements, expected ${storage.numel}`);
    }
    if (wanted.has(storage)) {
      // The data follows its count at any byte offset. Slide it back onto an element boundary,
      // over the count bytes just read, so typed views of it need no copy.
      const misalign = (buf.byteOffset + pos) % DTYPE_BYTES[storage.dtype];
      if (misalign) buf.copyWithin(pos - misalign, pos, pos + size);
      storage.bytes = buf.subarray(pos - misalign, pos - misalign + size);
    }
    pos += size;
  }
  for (const s of wanted) {
    if (!s.bytes) throw new CheckpointError(file, `corrupt legacy checkpoint: no data for storage ${s.key}`);
  }
  return { stateDict, otherKeys };
}

function describeKeys(keys: unknown[]): string {
  const shown = keys.slice(0, 8).map((k) => (typeof k === 'string' ? `'${k}'` : String(k)));
  return shown.join(', ') + (keys.length > 8 ? `, ... (${keys.length} in all)` : '');
}

/** `checkpoint['fpn_model']` as name -> tensor, with upstream's `module.` stripping. */
function takeFpnModel(file: string, root: PyValue): FpnModel {
  if (!(root instanceof PyDict)) {
    throw new CheckpointError(file, `the checkpoint holds a ${pyTypeName(root)}, expected a dict with an 'fpn_model' state dict`);
  }
  const fpn = root.get('fpn_model');
  if (fpn === undefined) {
    throw new CheckpointError(
      file,
      `no 'fpn_model' entry (top-level keys: ${describeKeys(root.keys()) || 'none'}); expected an img2pose checkpoint {'fpn_model': state_dict, ...}`,
    );
  }
  if (!(fpn instanceof PyDict)) {
    const hint = fpn instanceof PyObject ? ' (a pickled module object; save model.state_dict() instead)' : '';
    throw new CheckpointError(file, `'fpn_model' is a ${pyTypeName(fpn)}, expected a state dict${hint}`);
  }
  const stateDict = new Map<string, TorchTensor>();
  for (const [k, v] of fpn.entries) {
    if (typeof k !== 'string') throw new CheckpointError(file, `'fpn_model' has a non-string key (${typeof k})`);
    // DataParallel saves `module.<name>`; upstream strips exactly one such prefix
    const name = k.startsWith('module.') ? k.slice('module.'.length) : k;
    if (v instanceof UnsupportedTensor) {
      throw new CheckpointError(file, `'fpn_model' entry '${k}' uses an unsupported storage type ${v.typeName}`);
    }
    if (!(v instanceof TorchTensor)) {
      throw new CheckpointError(file, `'fpn_model' entry '${k}' is a ${pyTypeName(v)}, not a dense tensor`);
    }
    if (stateDict.has(name)) throw new CheckpointError(file, `'fpn_model' holds '${name}' twice (with and without 'module.')`);
    checkBounds(file, k, v);
    stateDict.set(name, v);
  }
  const otherKeys = root.keys().filter((k) => k !== 'fpn_model').map(String);
  return { stateDict, otherKeys };
}

function checkBounds(file: string, name: string, t: TorchTensor): void {
  if (t.shape.length !== t.strides.length) {
    throw new CheckpointError(file, `tensor '${name}' has ${t.shape.length} sizes but ${t.strides.length} strides`);
  }
  if (t.numel === 0) return;
  const lastElement = t.offset + t.shape.reduce((acc, n, d) => acc + (n - 1) * t.strides[d], 0);
  if (lastElement >= t.storage.numel) {
    throw new CheckpointError(
      file,
      `tensor '${name}' reads element ${lastElement} of a storage with ${t.storage.numel} elements (corrupt checkpoint)`,
    );
  }
}

/**
 * Reads a checkpoint file: container, pickles and the `fpn_model` storages. `hash: false` skips
 * the file's sha256 (~0.2 s for the official 160 MB file), which only a conversion records.
 * `fromFile` (without the hash): a zip checkpoint stays on disk and each storage is read from it
 * when converted, so memory never holds the whole file; `close()` the result when done.
 */
export async function loadCheckpoint(
  file: string,
  { hash = true, fromFile = false }: { hash?: boolean; fromFile?: boolean } = {},
): Promise<LoadedCheckpoint> {
  if (fromFile && !hash) {
    const opened = await openChecked(file);
    const head = Buffer.alloc(4);
    if (opened.size >= 4) await opened.handle.read(head, 0, 4, 0);
    if (startsWith(head, ZIP_MAGIC)) {
      const { fd } = opened.handle;
      const close = () => void opened.handle.close();
      try {
        let archive: ZipArchive;
        try {
          archive = ZipArchive.open(fileSource(fd, opened.size));
        } catch (e) {
          throw zipProblem(file, e);
        }
        const result = readZip(file, archive);
        return { file, format: 'zip', byteLength: opened.size, stateDict: result.stateDict, otherKeys: result.otherKeys, close };
      } catch (e) {
        close();
        throw e;
      }
    }
    // Not a zip (a legacy pickle, or not a checkpoint): read whole, as below.
    await opened.handle.close();
  }
  let buf: Uint8Array;
  try {
    buf = await readRegularFile(file);
  } catch (e) {
    throw checkpointReadProblem(file, e);
  }
  const sha256 = hash ? createHash('sha256').update(buf).digest('hex') : undefined;
  const byteLength = buf.length;
  if (buf.length === 0) throw new CheckpointError(file, 'empty file, not a PyTorch checkpoint');
  let format: CheckpointFormat;
  let result: FpnModel;
  if (startsWith(buf, ZIP_MAGIC)) {
    format = 'zip';
    result = readZip(file, buf);
  } else if (buf[0] === 0x80) {
    format = 'legacy';
    result = readLegacy(file, buf);
  } else {
    throw new CheckpointError(
      file,
      'not a PyTorch checkpoint: neither a torch.save zip archive nor a legacy torch.save pickle',
    );
  }
  return { file, format, sha256, byteLength, stateDict: result.stateDict, otherKeys: result.otherKeys, close: () => undefined };
}

const ZIP_MAGIC = [0x50, 0x4b, 0x03, 0x04];

async function openChecked(file: string): Promise<Awaited<ReturnType<typeof openRegularFile>>> {
  try {
    return await openRegularFile(file);
  } catch (e) {
    throw checkpointReadProblem(file, e);
  }
}

function checkpointReadProblem(file: string, e: unknown): unknown {
  if (!(e instanceof FileReadError)) return e;
  const problem = e.code === 'ENOENT' ? 'no such file' : e.code === 'EISDIR' ? 'is a folder, expected a .pth file' : e.problem;
  return new CheckpointError(file, problem);
}

/** A checkpoint tensor as plain data: row-major values in the checkpoint's own dtype. */
export interface CheckpointTensor {
  dtype: TorchDtype;
  shape: number[];
  /** float16/bfloat16 as raw bit patterns (Uint16Array), int64 as BigInt64Array, bool as 0/1 bytes. */
  data: TensorValues;
}

/**
 * Every tensor of `checkpoint['fpn_model']`, keyed by name without `module.`, in checkpoint
 * order, each as a contiguous row-major copy (strides and storage offsets applied).
 */
export async function readCheckpoint(file: string): Promise<Map<string, CheckpointTensor>> {
  const ckpt = await loadCheckpoint(file, { hash: false });
  const out = new Map<string, CheckpointTensor>();
  for (const [name, t] of ckpt.stateDict) {
    out.set(name, { dtype: t.dtype, shape: t.shape.slice(), data: t.contiguous() });
    t.storage.release();
  }
  return out;
}
