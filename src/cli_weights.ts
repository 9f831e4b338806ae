/**
 * `img2pose weights <path|verify|clear|download|install|formula>`: the official weights' cache,
 * and the untrained test weights as a folder.
 */
import { promises as fsp } from 'fs';
import * as path from 'path';
import { Command } from 'commander';
import { writeFormulaWeights, FORMULA_NOTE } from './io/formula_weights';
import {
  ReleaseOptions,
  clearReleaseCache,
  ensureReleaseWeights,
  installReleaseZip,
  releaseFolder,
  verifyReleaseFolder,
} from './io/weights_cache';

export interface WeightsCommandIO {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
}

interface CacheCliOptions {
  cacheDir?: string;
}

function releaseOptions(opts: CacheCliOptions & { url?: string }, io: WeightsCommandIO): ReleaseOptions {
  return { cacheDir: opts.cacheDir, url: opts.url, log: (line) => io.stderr(`img2pose: ${line}\n`) };
}

async function isInstalled(folder: string): Promise<boolean> {
  return fsp.stat(folder).then(
    () => true,
    () => false,
  );
}

/** Adds the `weights` command to `program`; each action reports its exit code through `setExit`. */
export function addWeightsCommand(program: Command, io: WeightsCommandIO, setExit: (code: number) => void): void {
  const weights = program.command('weights').description("the official weights' cache (path, verify, clear, download, install) and the test weights (formula)");
  const cacheDirOption = (c: Command): Command => c.option('--cache-dir <dir>', 'the cache folder (default: IMG2POSE_CACHE, else ~/.cache/img2pose-tfjs)');

  cacheDirOption(weights.command('path').description('print the folder of the cached official weights'))
    .action(async (opts: CacheCliOptions) => {
      const folder = releaseFolder(releaseOptions(opts, io));
      io.stdout(`${folder}\n`);
      if (!(await isInstalled(folder))) io.stderr('img2pose: not downloaded yet (`img2pose weights download`, or any first load, does it)\n');
      setExit(0);
    });

  cacheDirOption(weights.command('verify').description('check every cached file against the sha256 recorded when it was made'))
    .action(async (opts: CacheCliOptions) => {
      const options = releaseOptions(opts, io);
      const folder = releaseFolder(options);
      if (!(await isInstalled(folder))) {
        io.stderr(`img2pose: no cached weights in ${folder} (\`img2pose weights download\` fetches them)\n`);
        return setExit(1);
      }
      const record = await verifyReleaseFolder(folder, options);
      io.stdout(
        `${folder}: ok (${Object.keys(record.files).length} files; checkpoint ${record.checkpoint.member} sha256 ${record.checkpoint.sha256}; ` +
          `downloaded ${record.createdAt} from ${record.source.downloadedFrom})\n`,
      );
      setExit(0);
    });

  cacheDirOption(weights.command('clear').description('remove the cached official weights and any partial download'))
    .action(async (opts: CacheCliOptions) => {
      const removed = await clearReleaseCache(releaseOptions(opts, io));
      io.stdout(removed.length ? removed.map((p) => `removed ${p}\n`).join('') : 'nothing to remove\n');
      setExit(0);
    });

  cacheDirOption(weights.command('download').description('download, check, convert and cache the official weights now (CC BY-NC 4.0)'))
    .option('--url <url>', 'download the release zip from here (default: IMG2POSE_WEIGHTS_URL, else Google Drive)')
    .action(async (opts: CacheCliOptions & { url?: string }) => {
      const options = releaseOptions(opts, io);
      const folder = await ensureReleaseWeights(options);
      io.stdout(`${folder}\n`);
      setExit(0);
    });

  cacheDirOption(weights.command('install').description('install a release zip downloaded by hand (img2pose_v1.zip) into the cache'))
    .argument('<zip>', 'the img2pose_v1 release zip')
    .action(async (zip: string, opts: CacheCliOptions) => {
      const folder = await installReleaseZip(zip, releaseOptions(opts, io));
      io.stdout(`${folder}\n`);
      setExit(0);
    });

  weights
    .command('formula')
    .description('write the UNTRAINED test weights as a converted folder (detections with them are meaningless)')
    .requiredOption('--out <dir>', 'output folder')
    .action(async (opts: { out: string }) => {
      const modelJson = await writeFormulaWeights(opts.out);
      io.stderr(`img2pose: ${FORMULA_NOTE}\n`);
      io.stdout(`${path.dirname(modelJson)}\n`);
      setExit(0);
    });
}
