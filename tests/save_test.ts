/**
 * The upscale tool's saving (cli/save.ts): encoded and written atomically, on the writer thread in
 * the order asked, with errors that name the file; never over an existing file without `force`.
 */
import assert from "node:assert/strict";
import { decodeImage, type RgbaImage } from "../core/image_io.ts";
import { saveImage, SaveThread } from "../cli/save.ts";

function image(seed: number): RgbaImage {
  const width = 5, height = 3;
  const data = Uint8ClampedArray.from({ length: width * height * 4 }, (_, i) => (i * seed * 31) % 256);
  return { width, height, data };
}

Deno.test("saving: on the writer thread in order, the same bytes as on this one; errors name the file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "save_test_" });
  const thread = new SaveThread();
  try {
    const want = [1, 2, 3].map(image);
    // three at once, then one that must not replace an existing file, then one into no folder
    const saves = want.map((img, k) =>
      thread.save({
        image: { ...img, data: img.data.slice() },
        format: "png",
        output: `${dir}/${k}.png`,
        force: false,
      })
    );
    await Promise.all(saves);
    for (const [k, img] of want.entries()) {
      const got = await decodeImage(await Deno.readFile(`${dir}/${k}.png`));
      assert.deepEqual([got.width, got.height], [img.width, img.height]);
      assert.deepEqual(got.data, img.data, `image ${k}`);
    }
    await saveImage({ image: image(1), format: "png", output: `${dir}/here.png`, force: false });
    assert.deepEqual(await Deno.readFile(`${dir}/here.png`), await Deno.readFile(`${dir}/0.png`));
    await assert.rejects(
      thread.save({ image: image(4), format: "png", output: `${dir}/0.png`, force: false }),
      new RegExp(`^Error: ${dir}/0.png exists \\(use --force to overwrite\\)$`),
    );
    await assert.rejects(
      thread.save({ image: image(4), format: "jpeg", output: `${dir}/no/such.jpg`, force: false }),
      /no\/such\.jpg: its folder does not exist/,
    );
    await thread.save({ image: image(4), format: "png", output: `${dir}/0.png`, force: true });
    const replaced = await decodeImage(await Deno.readFile(`${dir}/0.png`));
    assert.deepEqual(replaced.data, image(4).data, "--force replaces");
    // nothing but the outputs: no temporary files left
    const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(names, ["0.png", "1.png", "2.png", "here.png"]);
    thread.close();
    await assert.rejects(
      thread.save({ image: image(5), format: "png", output: `${dir}/late.png`, force: false }),
      /closed/,
    );
  } finally {
    thread.close();
    await Deno.remove(dir, { recursive: true });
  }
});
