"""PyTorch reference timings for `deno task bench`: RRDBNet (BasicSR layout, random weights) on the
same shapes, so tfjs and PyTorch are compared on the same machine in the same run.

Prints one JSON object on stdout: {"torch", "device", "threads", "results": [{"name", "ms", "times_ms"}],
"peak_mb", "peak_kind"}. Usage: torch_bench.py --device cpu|cuda --threads 2 --case forward:1x64x64
--case train:16x32x32; with --serve it answers bench/peer.ts's requests (one run at a time) instead.
gan: cases take one step of BasicSR's ESRGANModel (VGG19 conv5_4 perceptual loss before the activation,
RaGAN with its VGG-style discriminator, L1; G then D, both Adam), with random VGG weights.
"""
import argparse, json, resource, statistics, sys, time
import torch
import torch.nn as nn
import torch.nn.functional as F


class RDB(nn.Module):
    def __init__(s, nf, gc):
        super().__init__()
        s.convs = nn.ModuleList(nn.Conv2d(nf + i * gc, gc if i < 4 else nf, 3, 1, 1) for i in range(5))

    def forward(s, x):
        feats = [x]
        for i, conv in enumerate(s.convs):
            y = conv(torch.cat(feats, 1))
            feats.append(F.leaky_relu(y, 0.2) if i < 4 else y)
        return feats[-1] * 0.2 + x


class RRDBNet(nn.Module):
    def __init__(s, nf=64, nb=23, gc=32):
        super().__init__()
        s.conv_first = nn.Conv2d(3, nf, 3, 1, 1)
        s.body = nn.Sequential(*[nn.Sequential(RDB(nf, gc), RDB(nf, gc), RDB(nf, gc)) for _ in range(nb)])
        s.conv_body, s.conv_up1, s.conv_up2, s.conv_hr = (nn.Conv2d(nf, nf, 3, 1, 1) for _ in range(4))
        s.conv_last = nn.Conv2d(nf, 3, 3, 1, 1)

    def forward(s, x):
        feat = s.conv_first(x)
        body = feat
        for rrdb in s.body:  # residual in residual: 0.2 * RRDB(x) + x
            body = rrdb(body) * 0.2 + body
        feat = feat + s.conv_body(body)
        for up in (s.conv_up1, s.conv_up2):
            feat = F.leaky_relu(up(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return s.conv_last(F.leaky_relu(s.conv_hr(feat), 0.2))


class VGGStyleDiscriminator(nn.Module):
    """BasicSR's discriminator for 128x128 inputs."""
    def __init__(s, nf=64):
        super().__init__()
        widths = [nf, nf * 2, nf * 4, nf * 8, nf * 8]
        layers, cin = [nn.Conv2d(3, nf, 3, 1, 1), nn.LeakyReLU(0.2)], nf
        for i, w in enumerate(widths):
            if i:  # conv{i}_0: 3x3 to the new width
                layers += [nn.Conv2d(cin, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.LeakyReLU(0.2)]
            layers += [nn.Conv2d(w, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.LeakyReLU(0.2)]
            cin = w
        s.features = nn.Sequential(*layers)
        s.linear1, s.linear2 = nn.Linear(nf * 8 * 4 * 4, 100), nn.Linear(100, 1)

    def forward(s, x):
        return s.linear2(F.leaky_relu(s.linear1(s.features(x).flatten(1)), 0.2))


def vgg19_conv5_4():
    """VGG19's features up to conv5_4, before its ReLU (torchvision's layout, random weights)."""
    layers, cin = [], 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(cin, v, 3, 1, 1), nn.ReLU()]
            cin = v
    return nn.Sequential(*layers[:-1])


def gan_step(net, x, gt, dev):
    """One ESRGANModel.optimize_parameters: L_G = L_percep + 5e-3 L_Ra + 1e-2 L1, then D's RaGAN."""
    d, vgg = VGGStyleDiscriminator().to(dev), vgg19_conv5_4().to(dev)
    for p in vgg.parameters():
        p.requires_grad_(False)
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)
    feats = lambda t: vgg((t - mean) / std)
    bce = nn.BCEWithLogitsLoss()
    opt_g = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.9, 0.99))
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-4, betas=(0.9, 0.99))
    ones = lambda t: torch.ones_like(t)
    zeros = lambda t: torch.zeros_like(t)
    def step():
        for p in d.parameters():
            p.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        sr = net(x)
        l_pix = 1e-2 * F.l1_loss(sr, gt)
        l_percep = F.l1_loss(feats(sr), feats(gt).detach())
        real = d(gt).detach()
        fake = d(sr)
        l_gan = 5e-3 * (bce(real - fake.mean(), zeros(real)) + bce(fake - real.mean(), ones(fake))) / 2
        (l_pix + l_percep + l_gan).backward()
        opt_g.step()
        for p in d.parameters():
            p.requires_grad_(True)
        opt_d.zero_grad(set_to_none=True)
        fake = d(sr).detach()
        real = d(gt)
        (bce(real - fake.mean(), ones(real)) * 0.5).backward()
        fake = d(sr.detach())
        (bce(fake - real.detach().mean(), zeros(fake)) * 0.5).backward()
        opt_d.step()
    return step


def tiled(net, x, tile=128, pad=24):
    """Real-ESRGAN's RealESRGANer.tile_process with the bench's tiles: each padded tile through the
    net, its core pasted into the output (on the device; the host copy is the "+host" time)."""
    n, c, h, w = x.shape
    out = x.new_zeros(n, c, h * 4, w * 4)
    with torch.no_grad():
        for y0 in range(0, h, tile):
            for x0 in range(0, w, tile):
                y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                py0, px0 = max(y0 - pad, 0), max(x0 - pad, 0)
                part = net(x[:, :, py0:min(y1 + pad, h), px0:min(x1 + pad, w)])
                oy, ox = (y0 - py0) * 4, (x0 - px0) * 4
                out[:, :, y0 * 4:y1 * 4, x0 * 4:x1 * 4] = part[:, :, oy:oy + (y1 - y0) * 4, ox:ox + (x1 - x0) * 4]
    return out


def prepare(net, case, dev):
    """Returns a function that runs one forward pass, one training step (L1, Adam) or one gan step of
    `case`."""
    kind, shape = case.split(":")
    shape, _, tile = shape.partition("/")  # upscale:1x512x512/256: 256-pixel tiles
    n, h, w = (int(v) for v in shape.split("x"))
    x = torch.rand(n, 3, h, w, device=dev)
    if kind == "forward":
        net.eval()
        def step():
            with torch.no_grad():
                return net(x)
        return step
    if kind == "upscale":
        net.eval()
        return lambda: tiled(net, x, tile=int(tile or 128))
    net.train()
    target = torch.rand(n, 3, h * 4, w * 4, device=dev)
    if kind == "gan":
        return gan_step(net, x, target, dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    def step():
        opt.zero_grad(set_to_none=True)
        F.l1_loss(net(x), target).backward()
        opt.step()
    return step


def tf32_setter():
    """Returns a function that sets whether cuDNN may run fp32 convolutions on TF32 tensor cores
    (PyTorch's default: yes), the setting it found restored by passing None."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # PyTorch 2.9+
        found = conv.fp32_precision
        def put(on):
            conv.fp32_precision = found if on is None else ("tf32" if on else "ieee")
        return put
    found = torch.backends.cudnn.allow_tf32
    def put(on):
        torch.backends.cudnn.allow_tf32 = found if on is None else on
    return put


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=23)
    ap.add_argument("--case", action="append", default=[], help="forward:, train:, gan: or upscale:NxHxW (LR size)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--serve", action="store_true", help="answer bench/peer.ts requests on stdin")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    net = RRDBNet(nb=a.blocks).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def timed(step, cpu=False):
        """ms to the GPU's completion; with cpu, also CPU ms and (forward on cuda) ms until the output
        is in host memory, which the bench's own forward rows include (they read their output back)."""
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        out = step()
        sync()
        ms = (time.perf_counter() - t0) * 1e3
        if not cpu:
            return ms
        host_ms = None
        if out is not None and dev.type == "cuda":
            out.cpu()
            host_ms = (time.perf_counter() - t0) * 1e3
        return ms, (time.process_time() - c0) * 1e3, host_ms

    # cuDNN runs fp32 convolutions on TF32 tensor cores unless told not to (WGSL has no such path):
    # on cuda each run is also timed in strict fp32 ("ieee")
    put_tf32 = tf32_setter() if dev.type == "cuda" else None

    def strict(step):
        """ms in strict fp32, or the error as text: it must never cost the run its main figure."""
        try:
            put_tf32(False)
            try:
                return timed(step)
            finally:
                put_tf32(None)
        except Exception as e:
            return f"{type(e).__name__}: {e}"

    # cuDNN's benchmark mode (BasicSR's train.py turns it on): each shape's fastest algorithms, found
    # by timing them on the first call (in setup's warm-up), rather than cuDNN's heuristic pick
    def benchmarked(step):
        """ms with torch.backends.cudnn.benchmark on, or the error as text."""
        try:
            torch.backends.cudnn.benchmark = True
            try:
                return timed(step)
            finally:
                torch.backends.cudnn.benchmark = False
        except Exception as e:
            return f"{type(e).__name__}: {e}"

    def also(step):
        """The other timings of one run on cuda: strict fp32 and benchmark mode."""
        extra = {}
        for name, fn in (("no-tf32", strict), ("cudnn-benchmark", benchmarked)):
            r = fn(step)
            extra.setdefault("also" if isinstance(r, float) else "also_errors", {})[name] = r
        return extra

    def peak():
        if dev.type == "cuda":
            return {"peak_mb": torch.cuda.max_memory_allocated() / 2**20, "peak_kind": "cuda_allocated"}
        return {"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_kind": "rss"}

    about = {"torch": torch.__version__, "device": a.device, "threads": torch.get_num_threads()}
    if a.serve:
        say = lambda r: print("@@bench " + json.dumps(r), flush=True)
        say({"ready": True, **about})
        step = None
        for line in sys.stdin:
            msg = json.loads(line)
            try:
                if msg["cmd"] == "setup":
                    step = prepare(net, msg["case"], dev)
                    for _ in range(msg.get("warmup", 1)):
                        timed(step)
                        if put_tf32:
                            also(step)
                    say({"ok": True})
                elif msg["cmd"] == "run":
                    ms, cpu_ms, host_ms = timed(step, cpu=True)
                    extra = {"host_ms": host_ms} if host_ms is not None else {}
                    if put_tf32:
                        extra.update(also(step))
                    say({"ms": ms, "cpu_ms": cpu_ms, **extra})
                elif msg["cmd"] == "finish":
                    step = None
                    say({"ok": True})
                elif msg["cmd"] == "exit":
                    say(peak())
                    return
            except Exception as e:  # reported to the bench as this request's error
                say({"error": f"{type(e).__name__}: {e}"})
        return
    results = []
    for case in a.case or ["forward:1x64x64"]:
        step = prepare(net, case, dev)
        times = [timed(step) for _ in range(a.warmup + a.runs)][a.warmup:]
        results.append({"name": case, "ms": statistics.median(times), "times_ms": times})
    print(json.dumps({**about, "results": results, **peak()}))


if __name__ == "__main__":
    main()
