/** The package's own version, read from its package.json (found from src/ or dist/src/ alike). */
import * as fs from 'fs';
import * as path from 'path';

const PACKAGE_NAME = 'img2pose-tfjs';

export function packageVersion(): string {
  let dir = __dirname;
  for (let up = 0; up < 4; up++) {
    const file = path.join(dir, 'package.json');
    if (fs.existsSync(file)) {
      const json = JSON.parse(fs.readFileSync(file, 'utf8')) as { name?: unknown; version?: unknown };
      if (json.name === PACKAGE_NAME && typeof json.version === 'string') return json.version;
    }
    dir = path.dirname(dir);
  }
  return 'unknown';
}
