/**
 * Our converted-weights folder: the standard tfjs weights format (model.json with a
 * `weightsManifest`, binary shards `group1-shardKofN.bin` of at most 4 MB each, split at fixed
 * byte offsets like tfjs' own writer) plus an `img2pose` metadata object. Shared by the
 * converter (writer) and src/io/weights_io.ts (reader).
 */
import * as fs from 'fs';
import * as path from 'path';
import { ResNetDepth } from './weights';

export const WEIGHTS_FORMAT = 'img2pose-tfjs-weights';
export const WEIGHTS_FORMAT_VERSION = 1;
export const MODEL_JSON = 'model.json';
/** tfjs' default shard size. */
export const SHARD_BYTES = 4 * 1024 * 1024;
export const SHARD_PATTERN = /^group1-shard\d+of\d+\.bin$/;

export function shardName(k: number, n: number): string {
  return `group1-shard${k}of${n}.bin`;
}

export const LAYOUT_DESCRIPTION = {
  names: "upstream state-dict keys without the 'module.' prefix",
  conv: 'torch (out, in, kh, kw) stored as (kh, kw, in, out)',
  linear: 'torch (out, in) stored as (in, out); roi fc6 inputs stay in torch (C, 7, 7) order',
  norm: 'BatchNorm weight, bias, running_mean, running_var stored raw (not folded); num_batches_tracked dropped',
  order: "upstream state_dict order",
  dtype: 'float32, little-endian',
} as const;

export interface WeightEntryJson {
  name: string;
  shape: number[];
  dtype: 'float32';
}

export interface WeightsGroupJson {
  paths: string[];
  weights: WeightEntryJson[];
}

/** Where the pose statistics came from: .npy file names, 'values' given in code, or upstream's defaults. */
export type PoseStatisticsSource = 'defaults' | { mean: string; stddev: string };

export interface Img2PoseMetadata {
  formatVersion: number;
  depth: ResNetDepth;
  layout: typeof LAYOUT_DESCRIPTION;
  /** dof = dof_norm * poseStddev + poseMean; float64 values exactly as read. */
  poseMean: number[];
  poseStddev: number[];
  poseStatistics: PoseStatisticsSource;
  /** The checkpoint converted ('generated': weights made in memory, sha256 of their bytes). */
  source: { file: string; sha256: string; format: 'zip' | 'legacy' | 'generated'; bytes: number };
  converterVersion: string;
  /** Byte size of each shard, so a reader can name a truncated one. */
  shardBytes: number[];
}

export interface Img2PoseModelJson {
  format: typeof WEIGHTS_FORMAT;
  generatedBy: string;
  convertedBy: string;
  img2pose: Img2PoseMetadata;
  weightsManifest: WeightsGroupJson[];
}

let version: string | undefined;

/** This package's version, from the nearest package.json named img2pose-tfjs (source or dist tree). */
export function packageVersion(): string {
  if (version !== undefined) return version;
  version = '0.0.0-unknown';
  let dir = __dirname;
  for (let i = 0; i < 5; i++) {
    try {
      const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'img2pose-tfjs' && typeof pkg.version === 'string') {
        version = pkg.version;
        break;
      }
    } catch {
      // not here; look one level up
    }
    dir = path.dirname(dir);
  }
  return version;
}
