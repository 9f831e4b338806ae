/**
 * A stand-in for the official release zip: the formula state dict written as a `torch.save` zip
 * checkpoint (bench/torch_save.ts) plus the two pose-statistics .npy files, under the release's
 * member names.
 */
import { zipSync } from 'fflate';
import { HostTensor } from '../../converter/layout';
import { zipCheckpoint } from '../../bench/torch_save';

/** `torch.save({'fpn_model': state_dict}, f)` in the zip format (storages stored), tensors in torch layout. */
export function torchZipCheckpoint(stateDict: ReadonlyMap<string, HostTensor>): Uint8Array {
  return zipCheckpoint([...stateDict].map(([name, t]) => ({ name, shape: t.shape, data: t.data })), 0);
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
