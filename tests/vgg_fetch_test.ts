import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { downloadVerified } from "../cli/vgg_fetch.ts";

// A local server stands in for download.pytorch.org: no test ever goes to the internet.
Deno.test("vgg:fetch: verified download lands via rename; bad hash or HTTP error writes nothing", async () => {
  const body = new Uint8Array(300_000).map((_, i) => (i * 31) & 255);
  const sha = createHash("sha256").update(body).digest("hex");
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen() {} },
    (req) =>
      new URL(req.url).pathname === "/vgg19.pth"
        ? new Response(body, { headers: { "content-length": String(body.length) } })
        : new Response("no", { status: 404 }),
  );
  const base = `http://127.0.0.1:${server.addr.port}`;
  const dir = await Deno.makeTempDir();
  try {
    const dest = `${dir}/vgg19-test.pth`;
    const seen: number[] = [];
    const r = await downloadVerified(`${base}/vgg19.pth`, dest, {
      sha256Prefix: sha.slice(0, 8),
      onProgress: (done) => seen.push(done),
    });
    assert.equal(r.sha256, sha);
    assert.equal(r.bytes, body.length);
    assert.deepEqual(await Deno.readFile(dest), body);
    assert.equal(seen.at(-1), body.length);

    const other = `${dir}/other.pth`;
    await assert.rejects(
      () => downloadVerified(`${base}/vgg19.pth`, other, { sha256Prefix: "dcbb9e9d" }),
      /does not start with dcbb9e9d; nothing was written/,
    );
    await assert.rejects(
      () => downloadVerified(`${base}/missing`, other, { sha256Prefix: "00" }),
      /HTTP 404/,
    );
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["vgg19-test.pth"], "no temp files left");
  } finally {
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vgg:fetch: an unreachable host gives one clear message", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // port 9 on localhost: nothing listens, the connection is refused at once
    await assert.rejects(
      () => downloadVerified("http://127.0.0.1:9/vgg19.pth", `${dir}/v.pth`, { sha256Prefix: "00" }),
      /cannot download http:\/\/127.0.0.1:9\/vgg19.pth: .*Is the internet reachable/s,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
