/** The Python-free img2pose checkpoint converter. */
export { CheckpointError } from './errors';
export { readCheckpoint } from './checkpoint';
export type { CheckpointTensor, CheckpointFormat } from './checkpoint';
export { valuesAsNumbers } from './tensor_data';
export type { TorchDtype, TensorValues } from './tensor_data';
export { convertCheckpoint, DEFAULT_POSE_WARNING } from './convert';
export type { ConvertOptions, ConversionReport, PoseStatisticsInput, Warn } from './convert';
export { checkpointToWeights } from './in_memory';
export { img2poseSpec, detectDepth } from './spec';
export type { KeySpec } from './spec';
export { WEIGHTS_FORMAT, SHARD_BYTES } from './weights_format';
export type { Img2PoseModelJson, Img2PoseMetadata, PoseStatisticsSource } from './weights_format';
export { runConvert } from './cli';
