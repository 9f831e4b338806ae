import * as fs from 'fs';
import { defaultFormats } from 'jimp';
import { decodeImage } from '../src/io';
import { imagePath } from './utils/golden';
it('bmp/gif/tiff', async () => {
  const codecs = defaultFormats.map((f) => f());
  const png = codecs.find((f) => f.mime === 'image/png')!;
  const bm = await png.decode(fs.readFileSync(imagePath('small_1.png')));
  const ref = await decodeImage(imagePath('small_1.png'));
  const r = await ref.data();
  for (const mime of ['image/bmp', 'image/gif', 'image/tiff']) {
    const c = codecs.find((f) => f.mime === mime)!;
    try {
      const bytes = await (c.encode as (b: unknown) => Promise<Buffer>)(bm);
      const t = await decodeImage(bytes);
      const d = await t.data();
      let maxd = 0; for (let i = 0; i < d.length; i++) maxd = Math.max(maxd, Math.abs(d[i] - r[i]));
      console.log(mime, t.shape, 'maxdiff', maxd);
      t.dispose();
    } catch (e) { console.log(mime, 'ERR', (e as Error).message); }
  }
  ref.dispose();
});
