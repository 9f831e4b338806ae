/**
 * A stand-in for the official release zip: the formula state dict written as a real
 * `torch.save` zip checkpoint (pickle protocol 2, storages as `archive/data/<key>`, as torch
 * writes them) plus the two pose-statistics .npy files, under the release's member names.
 */
import { zipSync } from 'fflate';
import { HostTensor } from '../../converter/layout';

/** A minimal pickle writer: just the opcodes torch's state dicts use. */
class Pickler {
  private readonly chunks: Buffer[] = [];
  op(...bytes: number[]): this {
    this.chunks.push(Buffer.from(bytes));
    return this;
  }
  str(s: string): this {
    const b = Buffer.from(s, 'utf8');
    const head = Buffer.alloc(5);
    head[0] = 0x58; // BINUNICODE
    head.writeUInt32LE(b.length, 1);
    this.chunks.push(head, b);
    return this;
  }
  int(n: number): this {
    const b = Buffer.alloc(5);
    b[0] = 0x4a; // BININT
    b.writeInt32LE(n, 1);
    this.chunks.push(b);
    return this;
  }
  global(module: string, name: string): this {
    this.chunks.push(Buffer.from(`c${module}\n${name}\n`, 'latin1'));
    return this;
  }
  tuple(write: () => void): this {
    this.op(0x28); // MARK
    write();
    return this.op(0x74); // TUPLE
  }
  orderedDict(): this {
    return this.global('collections', 'OrderedDict').op(0x29, 0x52); // EMPTY_TUPLE REDUCE
  }
  bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

function contiguousStrides(shape: number[]): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    strides[d] = s;
    s *= shape[d];
  }
  return strides;
}

/** `torch.save({'fpn_model': state_dict}, f)` in the zip format, tensors in torch layout. */
export function torchZipCheckpoint(stateDict: ReadonlyMap<string, HostTensor>, keyPrefix = 'module.'): Uint8Array {
  const p = new Pickler().op(0x80, 2).op(0x7d).str('fpn_model').orderedDict().op(0x28);
  const files: Record<string, Uint8Array | [Uint8Array, { level: 0 }]> = {};
  let key = 0;
  for (const [name, t] of stateDict) {
    const storageKey = String(key++);
    p.str(keyPrefix + name).global('torch._utils', '_rebuild_tensor_v2');
    p.tuple(() => {
      p.tuple(() => p.str('storage').global('torch', 'FloatStorage').str(storageKey).str('cpu').int(t.data.length)).op(0x51); // BINPERSID
      p.int(0);
      p.tuple(() => t.shape.forEach((n) => p.int(n)));
      p.tuple(() => contiguousStrides(t.shape).forEach((n) => p.int(n)));
      p.op(0x89).orderedDict(); // requires_grad False, backward hooks
    }).op(0x52); // REDUCE
    files[`archive/data/${storageKey}`] = [new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), { level: 0 }];
  }
  p.op(0x75, 0x73, 0x2e); // SETITEMS SETITEM STOP
  files['archive/data.pkl'] = p.bytes();
  files['archive/byteorder'] = Buffer.from('little');
  files['archive/version'] = Buffer.from('3\n');
  return zipSync(files, { level: 0 });
}

/** A .npy file of float64 values, shape (n,). */
export function npyFloat64(values: readonly number[]): Uint8Array {
  let header = `{'descr': '<f8', 'fortran_order': False, 'shape': (${values.length},), }`;
  header += ' '.repeat(64 - ((10 + header.length + 1) % 64)) + '\n';
  const head = Buffer.alloc(10);
  Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]).copy(head);
  head.writeUInt16LE(header.length, 8);
  return Buffer.concat([head, Buffer.from(header, 'latin1'), Buffer.from(Float64Array.from(values).buffer)]);
}

export const RELEASE_MEMBERS = {
  checkpoint: 'models/img2pose_v1.pth',
  poseMean: 'models/WIDER_train_pose_mean_v1.npy',
  poseStddev: 'models/WIDER_train_pose_stddev_v1.npy',
};

/** A release zip: the checkpoint stored, the statistics deflated (both methods occur in zips). */
export function releaseZip(parts: { checkpoint: Uint8Array; poseMean: number[]; poseStddev: number[] }, members = RELEASE_MEMBERS): Uint8Array {
  return zipSync({
    [members.checkpoint]: [parts.checkpoint, { level: 0 }],
    [members.poseMean]: [npyFloat64(parts.poseMean), { level: 6 }],
    [members.poseStddev]: [npyFloat64(parts.poseStddev), { level: 6 }],
  });
}
