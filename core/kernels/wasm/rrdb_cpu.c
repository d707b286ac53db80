// RRDBNet inference kernels for the CPU: WebAssembly SIMD128 with relaxed-SIMD FMA, built by
// core/kernels/wasm/build.ts into rrdb_cpu_wasm.ts. Driven by core/kernels/wasm_plan.ts, which
// lays out the buffers and the list of layers; several threads share the memory and each runs
// every layer on its own band of rows.
//
// Feature maps are NHWC with a one-pixel zero border ((H+2) x (W+2) pixels), so a 3x3 "same"
// convolution reads without bounds checks. A pixel's channels may sit inside a wider pixel
// (`cs`, the pixel stride in floats): the dense blocks' concatenations are channel slices of one
// buffer that the growth convolutions write into, never copies.
#include <wasm_simd128.h>

typedef float f32;
typedef int i32;

// Register blocking: MR output pixels of a row x 8 output channels, 2*MR accumulators. 6 leaves
// V8 (16 xmm registers on x64) room for the two weight vectors and the broadcast input; measured
// on a Zen 4 core: 4 px 42, 5 px 51, 6 px 54, 7 px 31 GFLOP/s (spills). Under Deno every load
// also costs V8's bounds check (no trap handler: denoland/deno#35658), so loads per FMA decide
// as much as FMAs: 6 x 8 needs 8 loads for 12; splatting lanes of wider loads by shuffles was
// slower (README, "Where the CPU time goes").
#define MR 6
#define NR 8

enum {
  OP_CONV = 0,
  OP_UPSAMPLE = 1,
  OP_WINOGRAD = 2,
  // training (wasm_train_plan.ts), see each op's function for what it reads of the record
  OP_UPSAMPLE_GRAD = 3,
  OP_ADD = 4,
  OP_WGRAD_TRANSFORM = 5,
  OP_WGRAD_GEMM = 6,
  OP_WGRAD_FINAL = 7,
  OP_PACK = 8,
  OP_ADAM = 9,
};

// One layer, as wasm_plan.ts writes it (all fields 4 bytes; pointers are byte offsets).
typedef struct {
  i32 op;
  const f32* in;  // the input's padded origin (pixel (-1, -1)), channel offset included
  i32 ics;        // input pixel stride (floats)
  i32 cin;
  i32 h, w;       // the input's interior size (conv: also the output's)
  const f32* weight;  // packed: [cout/8][3][3][cin][8], zero-padded past cout
  const f32* bias;    // cout rounded up to 8, zero-padded
  f32* out;       // padded origin, channel offset included
  i32 ocs;
  i32 cout;
  i32 lrelu;      // after the bias: 1 LeakyReLU 0.2, 2 ReLU (tfjs's fused convs); OP_PACK: see pack_rows
  f32 s0;         // out = act(conv + bias) * s0 + r1 * s1 + r2 * s2
  const f32* r1;  // padded origins with the output's geometry; null: absent
  i32 r1cs;
  f32 s1;
  const f32* r2;
  i32 r2cs;
  f32 s2;
  f32* scratch;   // OP_WINOGRAD: per-thread work space, `scratch_floats` apart
  i32 scratch_floats;
  i32 rn;         // the residuals cover output channels [0, rn) only; 0: all
  const f32* mask;  // gradients: channels >= mask_from times LeakyReLU'(mask) (padded origin)
  i32 mask_cs;
  i32 mask_from;
  i32 t0;         // filter gradients: this image's first tile
  f32 gscale;     // the filter gradient's scale (the residual scaling its output went through)
  i32 vchannels;  // filter gradients: the input channels V' holds (its layout); cin: those used
  i32 tiles;      // tiles of the whole batch
  i32 real_cin;   // the parameter's input channels (the map may hold more, zero)
  f32* grad;      // dW [3][3][real_cin][cout]
  f32* bias_grad;
  // OP_CONV's taps: 0 the 3x3 "same" conv's; 2x2 ones, for a stride-2 4x4 conv's space-to-depth
  // form (wasm_conv.ts): 1 at rows and columns (+0, +1) of the output pixel, 2 at (-1, 0)
  i32 taps;
} Layer;

static inline __attribute__((always_inline)) void store_lanes(f32* p, v128_t v, i32 n) {
  if (n > 0) p[0] = wasm_f32x4_extract_lane(v, 0);
  if (n > 1) p[1] = wasm_f32x4_extract_lane(v, 1);
  if (n > 2) p[2] = wasm_f32x4_extract_lane(v, 2);
  if (n > 3) p[3] = wasm_f32x4_extract_lane(v, 3);
}

// LeakyReLU's derivative at y = lrelu(x) (same sign as x) times g.
static inline __attribute__((always_inline)) v128_t lrelu_grad(v128_t g, v128_t y) {
  const v128_t slope = wasm_v128_bitselect(wasm_f32x4_splat(1), wasm_f32x4_splat(0.2f), wasm_f32x4_gt(y, wasm_f32x4_splat(0)));
  return wasm_f32x4_mul(g, slope);
}

// Up to 4 channels from p: lane-wise when fewer than 4 remain (no reads past a pixel).
static inline __attribute__((always_inline)) v128_t load_upto(const f32* p, i32 left) {
  return left >= 4 ? wasm_v128_load(p) : wasm_f32x4_make(p[0], left > 1 ? p[1] : 0, left > 2 ? p[2] : 0, 0);
}

static inline __attribute__((always_inline)) v128_t epilogue(const Layer* L, v128_t v, i32 pix, i32 c) {
  if (L->lrelu == 1) v = wasm_f32x4_max(v, wasm_f32x4_mul(v, wasm_f32x4_splat(0.2f)));
  else if (L->lrelu == 2) v = wasm_f32x4_max(v, wasm_f32x4_splat(0));
  v = wasm_f32x4_mul(v, wasm_f32x4_splat(L->s0));
  const i32 left = L->cout - c;
  if (!L->rn || c < L->rn) {  // rn is a multiple of 4
    if (L->r1) v = wasm_f32x4_relaxed_madd(load_upto(L->r1 + pix * L->r1cs + c, left), wasm_f32x4_splat(L->s1), v);
    if (L->r2) v = wasm_f32x4_relaxed_madd(load_upto(L->r2 + pix * L->r2cs + c, left), wasm_f32x4_splat(L->s2), v);
  }
  // a gradient map's slice whose last contribution this is (mask_from is a multiple of 4)
  if (L->mask && c >= L->mask_from) v = lrelu_grad(v, load_upto(L->mask + pix * L->mask_cs + c, left));
  return v;
}

// Channels [c, c + 8) of padded pixel `pix` through the epilogue (those below cout only).
static inline __attribute__((always_inline)) void store_pixel(const Layer* L, i32 pix, i32 c, v128_t a0, v128_t a1) {
  f32* op = L->out + pix * L->ocs + c;
  const i32 left = L->cout - c;
  const v128_t v0 = epilogue(L, a0, pix, c);
  if (left >= 8) {
    wasm_v128_store(op, v0);
    wasm_v128_store(op + 4, epilogue(L, a1, pix, c + 4));
  } else if (left > 4) {
    wasm_v128_store(op, v0);
    store_lanes(op + 4, epilogue(L, a1, pix, c + 4), left - 4);
  } else {
    store_lanes(op, v0, left);
  }
}

// Channels [c, c + 4) of padded pixel `pix` through the epilogue (those below cout only).
static inline __attribute__((always_inline)) void store_quad(const Layer* L, i32 pix, i32 c, v128_t a) {
  f32* op = L->out + pix * L->ocs + c;
  const v128_t v = epilogue(L, a, pix, c);
  if (L->cout - c >= 4) wasm_v128_store(op, v);
  else store_lanes(op, v, L->cout - c);
}

// The register block the convolutions and the filter gradient share: acc[p] += sum over k < n of
// in[p * stride + k * kstride] times the 8 values at w[8k]; `m` and `kstride` (constants after
// inlining) say how many of the MR rows are live and how far apart in's values of one row lie.
static inline __attribute__((always_inline)) void multiply_add(v128_t acc[MR][2], i32 m, const f32* in, i32 stride,
                                                               i32 kstride, const f32* w, i32 n) {
  // a bumped pointer, not w + 8k: V8's code for the indexed form took 1.7 s instead of 1.15 s
  for (i32 k = 0; k < n; k++) {
    const v128_t w0 = wasm_v128_load(w), w1 = wasm_v128_load(w + 4);
    w += NR;
#pragma clang loop unroll(full)
    for (i32 p = 0; p < MR; p++) {
      if (p < m) {
        const v128_t v = wasm_v128_load32_splat(in + p * stride + k * kstride);
        acc[p][0] = wasm_f32x4_relaxed_madd(v, w0, acc[p][0]);
        acc[p][1] = wasm_f32x4_relaxed_madd(v, w1, acc[p][1]);
      }
    }
  }
}

// `m` (a constant after inlining) output pixels from (y, x) for output channels [8b, 8b + 8).
static inline __attribute__((always_inline)) void conv_tile(const Layer* L, i32 m, i32 y, i32 x, i32 b) {
  const i32 ics = L->ics, cin = L->cin, pw = L->w + 2;
  v128_t acc[MR][2];
  const v128_t b0 = wasm_v128_load(L->bias + NR * b), b1 = wasm_v128_load(L->bias + NR * b + 4);
#pragma clang loop unroll(full)
  for (i32 p = 0; p < MR; p++) {
    if (p < m) acc[p][0] = b0, acc[p][1] = b1;
  }
  const i32 k0 = L->taps == 1 ? 1 : 0, kt = L->taps ? 2 : 3;
  const f32* wp = L->weight + b * kt * kt * cin * NR;
  for (i32 ky = k0; ky < k0 + kt; ky++) {
    for (i32 kx = k0; kx < k0 + kt; kx++, wp += cin * NR) {
      multiply_add(acc, m, L->in + ((y + ky) * pw + x + kx) * ics, ics, 1, wp, cin);
    }
  }
  const i32 pix0 = (y + 1) * pw + x + 1;
#pragma clang loop unroll(full)
  for (i32 p = 0; p < MR; p++) {
    if (p < m) store_pixel(L, pix0 + p, NR * b, acc[p][0], acc[p][1]);
  }
}

// Blocks of output channels outside rows: a block's filters (up to 256 KiB for a 2x2 conv of 2048
// inputs) stay in cache over the thread's rows instead of the whole filter streaming through once
// per row (a small map of wide layers ran at the memory's speed).
static void conv_rows(const Layer* L, i32 y0, i32 y1) {
  const i32 blocks = (L->cout + NR - 1) / NR, w = L->w;
  for (i32 b = 0; b < blocks; b++) {
    for (i32 y = y0; y < y1; y++) {
      i32 x = 0;
      for (; x + MR <= w; x += MR) conv_tile(L, MR, y, x, b);
      switch (w - x) {
        case 5: conv_tile(L, 5, y, x, b); break;
        case 4: conv_tile(L, 4, y, x, b); break;
        case 3: conv_tile(L, 3, y, x, b); break;
        case 2: conv_tile(L, 2, y, x, b); break;
        case 1: conv_tile(L, 1, y, x, b); break;
      }
    }
  }
}

// Winograd F(4x4, 3x3) (Lavin & Gray 2016, points 0, ±1, ±2): a 4x4 output tile from a 6x6 input
// tile with 36 products per channel pair instead of 144. Per row of tiles: the input transform
// V = B'dB of every tile into scratch ([36][tiles][cin], positions padded apart); per MR tiles x 8
// output channels, the 36 products as the direct kernel's register-blocked loop over cin (U = GgG',
// packed by wasm_plan.ts as [36][cout/8][cin][8]) into scratch M; the output transform A'MA with
// bias and epilogue. The transforms pass through a small buffer T (columns, then rows) so that no
// more values are live than x64's 16 vector registers hold: the module must not spill to a stack,
// which its threads would share (build.ts refuses a module that does). Needs cin % 4 == 0. Sides
// that are no multiple of 4: the last tiles read up to four rows past the border (wasm_plan.ts
// gives every map spare zero rows; a nonzero there would not cancel exactly in the transform) and
// up to four columns into the next row, and store only what lies inside. Measured on one thread
// (64x64 forward): F(2x2, 3x3) 2.11 s, this 1.43 s, 1.30 s with constant tail widths, 1.12 s with
// V's positions padded apart; all give the same PSNR against PyTorch fp32 (to 0.01 dB) on Set5 and
// Set14. Tried and slower: positions as the outer loop (1.60 s), the cin loop unrolled by 4 (1.47 s).

#define F32(x) wasm_f32x4_splat(x)
#define ADD wasm_f32x4_add
#define SUB wasm_f32x4_sub
#define MUL wasm_f32x4_mul
#define MADD(a, b, c) wasm_f32x4_relaxed_madd(a, b, c)  // a * b + c

// B'x for 6 values at p[0], p[s], ..., p[5s] into q[0], q[t], ..., q[5t].
static inline __attribute__((always_inline)) void input_1d(const f32* p, i32 s, f32* q, i32 t) {
  const v128_t d0 = wasm_v128_load(p), d1 = wasm_v128_load(p + s), d2 = wasm_v128_load(p + 2 * s);
  const v128_t d3 = wasm_v128_load(p + 3 * s), d4 = wasm_v128_load(p + 4 * s), d5 = wasm_v128_load(p + 5 * s);
  const v128_t a = SUB(d4, d2), b = SUB(d3, d1);  // used by r1..r4
  wasm_v128_store(q, ADD(MADD(F32(4), d0, MUL(F32(-5), d2)), d4));
  wasm_v128_store(q + t, MADD(F32(-4), ADD(d1, d2), ADD(d3, d4)));
  wasm_v128_store(q + 2 * t, MADD(F32(4), SUB(d1, d2), SUB(d4, d3)));
  wasm_v128_store(q + 3 * t, MADD(F32(2), b, a));
  wasm_v128_store(q + 4 * t, MADD(F32(-2), b, a));
  wasm_v128_store(q + 5 * t, ADD(MADD(F32(4), d1, MUL(F32(-5), d3)), d5));
}

// A'x for 6 values at p[0], ..., p[5s]: 4 values.
static inline __attribute__((always_inline)) void output_1d(const f32* p, i32 s, v128_t* y) {
  const v128_t m0 = wasm_v128_load(p), m1 = wasm_v128_load(p + s), m2 = wasm_v128_load(p + 2 * s);
  const v128_t m3 = wasm_v128_load(p + 3 * s), m4 = wasm_v128_load(p + 4 * s), m5 = wasm_v128_load(p + 5 * s);
  const v128_t a = ADD(m1, m2), b = SUB(m1, m2), c = ADD(m3, m4), d = SUB(m3, m4);
  y[0] = ADD(ADD(m0, a), c);
  y[1] = MADD(F32(2), d, b);
  y[2] = MADD(F32(4), c, a);
  y[3] = ADD(MADD(F32(8), d, b), m5);
}

// Floats from one position's transformed tiles to the next's in V: padded by 64 bytes, as a
// multiple of 4 KiB (cin 64 or 128 with 16 tiles) put all 36 in one set of the 8-way L1 and made
// conv3 (cin 128) slower than conv4 (cin 160).
static inline i32 vstride(i32 tiles, i32 cin) {
  return tiles * cin + 16;
}

// Products of all 36 positions for `m` tiles from tx0, channels [8b, 8b + 8), into M ([36][MR][8]).
static inline __attribute__((always_inline)) void winograd_gemm(const Layer* L, i32 m, const f32* V, i32 tiles,
                                                                  i32 tx0, i32 b, f32* M) {
  const i32 cin = L->cin, blocks = (L->cout + NR - 1) / NR;
  for (i32 pos = 0; pos < 36; pos++) {
    v128_t acc[MR][2];
#pragma clang loop unroll(full)
    for (i32 p = 0; p < MR; p++) {
      if (p < m) acc[p][0] = acc[p][1] = wasm_f32x4_splat(0);
    }
    const f32* wp = L->weight + (pos * blocks + b) * cin * NR;
    multiply_add(acc, m, V + pos * vstride(tiles, cin) + tx0 * cin, cin, 1, wp, cin);
#pragma clang loop unroll(full)
    for (i32 p = 0; p < MR; p++) {
      if (p < m) {
        wasm_v128_store(M + (pos * MR + p) * NR, acc[p][0]);
        wasm_v128_store(M + (pos * MR + p) * NR + 4, acc[p][1]);
      }
    }
  }
}

// Bytes of V that a row's tiles are transformed and multiplied in at a time (see chunk_tiles).
#define CHUNK_BYTES (512 * 1024)

// Tiles of a row transformed and multiplied at a time: their V (36 positions x cin floats a tile)
// in L2 beside one output block's filters (36 x cin x 8 floats), so that every output block's
// GEMMs read it there. A whole row's V (2.1 MB for the 76 tiles of a 304-pixel patch at cin 192)
// came from L3 once per output block: a pixel of a 512-pixel patch cost 8% more than one of a
// 280-pixel patch. A multiple of MR, so that only a row's last chunk has a short block.
static inline i32 chunk_tiles(i32 tiles, i32 cin) {
  i32 c = CHUNK_BYTES / (36 * 4 * cin) / MR * MR;
  if (c < MR) c = MR;
  return c < tiles ? c : tiles;
}

static void winograd_rows(const Layer* L, i32 t, i32 ty0, i32 ty1) {
  const i32 cin = L->cin, ics = L->ics, pw = L->w + 2, h = L->h, w = L->w;
  const i32 tiles = (w + 3) / 4, blocks = (L->cout + NR - 1) / NR;
  const i32 chunk = chunk_tiles(tiles, cin), vs = vstride(chunk, cin);
  f32* V = L->scratch + t * L->scratch_floats;
  f32* M = V + 36 * vstride(tiles, cin);
  f32* T = M + 36 * MR * NR;  // [6][6][4]
  for (i32 ty = ty0; ty < ty1; ty++) {
    for (i32 tc = 0; tc < tiles; tc += chunk) {
      const i32 n = tiles - tc < chunk ? tiles - tc : chunk;
      for (i32 tx = 0; tx < n; tx++) {
        const f32* d = L->in + (4 * ty * pw + 4 * (tc + tx)) * ics;
        for (i32 c = 0; c < cin; c += 4) {
          // columns: T[i][j] = (B'd)[i][j]; rows: V[6i + k] = (T B)[i][k]
          for (i32 j = 0; j < 6; j++) input_1d(d + j * ics + c, pw * ics, T + 4 * j, 24);
          for (i32 i = 0; i < 6; i++) input_1d(T + 24 * i, 4, V + 6 * i * vs + tx * cin + c, vs);
        }
      }
      for (i32 b = 0; b < blocks; b++) {
        for (i32 tx0 = 0; tx0 < n; tx0 += MR) {
          const i32 m = n - tx0 < MR ? n - tx0 : MR;
          // constant block widths, so that the accumulators stay in registers in the tails too
          switch (m) {
            case 6: winograd_gemm(L, 6, V, chunk, tx0, b, M); break;
            case 5: winograd_gemm(L, 5, V, chunk, tx0, b, M); break;
            case 4: winograd_gemm(L, 4, V, chunk, tx0, b, M); break;
            case 3: winograd_gemm(L, 3, V, chunk, tx0, b, M); break;
            case 2: winograd_gemm(L, 2, V, chunk, tx0, b, M); break;
            default: winograd_gemm(L, 1, V, chunk, tx0, b, M); break;
          }
          for (i32 p = 0; p < m; p++) {
            for (i32 half = 0; half < 2; half++) {
              const i32 c = NR * b + 4 * half;
              if (c >= L->cout) break;
              const v128_t bias = wasm_v128_load(L->bias + c);
              // columns: T[k][j] = (A'M)[k][j]; rows: y[k][l] = (T A)[k][l]
              for (i32 j = 0; j < 6; j++) {
                v128_t y[4];
                output_1d(M + (j * MR + p) * NR + 4 * half, 6 * MR * NR, y);
                for (i32 k = 0; k < 4; k++) wasm_v128_store(T + 4 * (6 * k + j), y[k]);
              }
              const i32 x = 4 * (tc + tx0 + p);
              for (i32 k = 0; k < 4 && 4 * ty + k < h; k++) {
                v128_t y[4];
                output_1d(T + 24 * k, 4, y);
                const i32 row = (4 * ty + k + 1) * pw + x + 1;
#pragma clang loop unroll(full)
                for (i32 l = 0; l < 4; l++) {
                  if (x + l < w) store_quad(L, row + l, c, ADD(y[l], bias));
                }
              }
            }
          }
        }
      }
    }
  }
}

// Nearest x2: output rows [y0, y1) of the (2h x 2w) interior from the (h x w) input.
static void upsample_rows(const Layer* L, i32 y0, i32 y1) {
  const i32 w = L->w, c = L->cin, ipw = w + 2, opw = 2 * w + 2;
  for (i32 y = y0; y < y1; y++) {
    const f32* src = L->in + ((y / 2 + 1) * ipw + 1) * L->ics;
    f32* dst = L->out + ((y + 1) * opw + 1) * L->ocs;
    for (i32 x = 0; x < 2 * w; x++) {
      const f32* s = src + (x / 2) * L->ics;
      f32* d = dst + x * L->ocs;
      i32 k = 0;
      for (; k + 4 <= c; k += 4) wasm_v128_store(d + k, wasm_v128_load(s + k));
      for (; k < c; k++) d[k] = s[k];
    }
  }
}

// ---- training: the backward pass and the weights' layouts (wasm_train_plan.ts) ----

// OP_UPSAMPLE_GRAD: rows [y0, y1) of out (h x w, cin channels, a multiple of 4) = the sums of the
// 2x2 blocks of in (2h x 2w), times LeakyReLU'(mask) where mask is set.
static void upsample_grad_rows(const Layer* L, i32 y0, i32 y1) {
  const i32 w = L->w, c = L->cin, ics = L->ics, ipw = 2 * w + 2, opw = w + 2;
  for (i32 y = y0; y < y1; y++) {
    for (i32 x = 0; x < w; x++) {
      const f32* s = L->in + ((2 * y + 1) * ipw + 2 * x + 1) * ics;
      const i32 pix = (y + 1) * opw + x + 1;
      for (i32 k = 0; k < c; k += 4) {
        v128_t v = ADD(ADD(wasm_v128_load(s + k), wasm_v128_load(s + ics + k)),
                       ADD(wasm_v128_load(s + ipw * ics + k), wasm_v128_load(s + (ipw + 1) * ics + k)));
        if (L->mask) v = lrelu_grad(v, wasm_v128_load(L->mask + pix * L->mask_cs + k));
        wasm_v128_store(L->out + pix * L->ocs + k, v);
      }
    }
  }
}

// OP_ADD: rows [y0, y1) of out (h x w) += s0 · in, channels [0, cin) (a multiple of 4).
static void add_rows(const Layer* L, i32 y0, i32 y1) {
  const i32 pw = L->w + 2;
  for (i32 y = y0; y < y1; y++) {
    for (i32 x = 0; x < L->w; x++) {
      const i32 pix = (y + 1) * pw + x + 1;
      for (i32 k = 0; k < L->cin; k += 4) {
        f32* d = L->out + pix * L->ocs + k;
        wasm_v128_store(d, MADD(wasm_v128_load(L->in + pix * L->ics + k), F32(L->s0), wasm_v128_load(d)));
      }
    }
  }
}

// Filter gradients in the Winograd domain. The forward computes a tile as Y = A'[U ⊙ V]A with
// U = GgG', V = B'dB; so dU = sum over tiles of (A dY A') ⊙ V and dg = G' dU G (Lavin & Gray 2016):
// the same 4x fewer products as the forward. Three ops: per image, the tiles' V (cin channels of
// `in`) and dM = A dY A' (cout channels of `out`, times gscale) into batch-wide arrays (V'
// [36][vchannels/8][tiles][8], M' [36][tiles][cout4], both written as whole vectors); per position
// the GEMM over all tiles into dU' [36][cout4][cin/8 · 8] (output channels as the broadcast rows,
// so that neither array needs a transpose); G' dU G into dW. Sides must be multiples of 4. A
// dense block's convs read prefixes of one buffer's channels: V' of conv5's input serves all five
// (conv1-4's transform records have cin 0). Measured (a step on a batch of 16 32x32 patches, 23
// blocks, 2 threads, each op kind run alone): V' scattered value by value into [cin][tiles] rows,
// 6.9 s of filter gradients per step; written as vectors, 6.1 s (3.4 s of it transforms); V'
// shared in the dense blocks, 3.9 s (step 9.5 s); strides padded off 4 KiB multiples, 3.4 s
// (transforms of conv5 1.0 → 0.67 s; step 8.9 s).

// A x (the adjoint of output_1d) for 4 values at p[0], ..., p[3s] into q[0], q[t], ..., q[5t].
static inline __attribute__((always_inline)) void grad_1d(const f32* p, i32 s, f32* q, i32 t) {
  const v128_t d0 = wasm_v128_load(p), d1 = wasm_v128_load(p + s), d2 = wasm_v128_load(p + 2 * s);
  const v128_t d3 = wasm_v128_load(p + 3 * s);
  const v128_t e = ADD(d0, d2), o = ADD(d1, d3), e4 = MADD(F32(4), d2, d0), o4 = MADD(F32(4), d3, d1);
  wasm_v128_store(q, d0);
  wasm_v128_store(q + t, ADD(e, o));
  wasm_v128_store(q + 2 * t, SUB(e, o));
  wasm_v128_store(q + 3 * t, MADD(F32(2), o4, e4));
  wasm_v128_store(q + 4 * t, MADD(F32(-2), o4, e4));
  wasm_v128_store(q + 5 * t, d3);
}

static inline i32 round4(i32 c) {
  return (c + 3) & ~3;
}

static inline i32 round8(i32 c) {
  return (c + 7) & ~7;
}

// Strides (floats) of V' (8-channel blocks, positions) and M' (positions), 64 bytes more than dense:
// as 4 KiB multiples (T a power of 2) one tile's 36 x 24 stores into V' all fell into one L1 set.
static inline i32 v_block(i32 T) {
  return T * NR + 16;
}

static inline i32 v_pos(i32 vchannels, i32 T) {
  return (round8(vchannels) / NR) * v_block(T) + 16;
}

static inline i32 m_pos(i32 cout, i32 T) {
  return T * round4(cout) + 16;
}

// OP_WGRAD_TRANSFORM: V' from in (into weight), M' from out (into bias) for tile rows [ty0, ty1)
// of this image (its first tile: t0).
static void wgrad_transform_rows(const Layer* L, i32 t, i32 ty0, i32 ty1) {
  const i32 cin = L->cin, ics = L->ics, ocs = L->ocs, pw = L->w + 2, tw = L->w / 4;
  const i32 cin8 = round8(cin), cout4 = round4(L->cout), T = L->tiles;
  const i32 vb = v_block(T), vp = v_pos(L->vchannels, T), mp = m_pos(L->cout, T);
  f32* Tb = L->scratch + t * L->scratch_floats;  // [6][6][4]
  f32* T2 = Tb + 144;                            // [36][4]
  f32* V = (f32*)L->weight;
  f32* M = (f32*)L->bias;
  const v128_t scale = F32(L->gscale);
  for (i32 ty = ty0; ty < ty1; ty++) {
    for (i32 tx = 0; tx < tw; tx++) {
      const i32 tile = L->t0 + ty * tw + tx;
      const f32* d = L->in + (4 * ty * pw + 4 * tx) * ics;
      for (i32 c = 0; c < cin8; c += 4) {
        f32* v = V + (c / NR) * vb + tile * NR + c % NR;
        if (c < cin) {
          for (i32 j = 0; j < 6; j++) input_1d(d + j * ics + c, pw * ics, Tb + 4 * j, 24);
          for (i32 i = 0; i < 6; i++) input_1d(Tb + 24 * i, 4, T2 + 24 * i, 4);
          for (i32 pos = 0; pos < 36; pos++) wasm_v128_store(v + pos * vp, wasm_v128_load(T2 + 4 * pos));
        } else {
          for (i32 pos = 0; pos < 36; pos++) wasm_v128_store(v + pos * vp, F32(0));
        }
      }
      // output channels past cout up to cout4 read the map's zero padding channels
      const f32* g = L->out + ((4 * ty + 1) * pw + 4 * tx + 1) * ocs;
      for (i32 c = 0; c < cout4; c += 4) {
        for (i32 j = 0; j < 4; j++) grad_1d(g + j * ocs + c, pw * ocs, Tb + 4 * j, 24);
        for (i32 i = 0; i < 6; i++) grad_1d(Tb + 24 * i, 4, T2 + 24 * i, 4);
        f32* m = M + tile * cout4 + c;
        for (i32 pos = 0; pos < 36; pos++) wasm_v128_store(m + pos * mp, MUL(wasm_v128_load(T2 + 4 * pos), scale));
      }
    }
  }
}

// Tiles per pass of the GEMM: its accumulators go through dU' once per pass.
#define KC 256

// dU' rows [co0, co0 + m) of position pos, all input channels, from tiles [k0, k0 + kn).
static inline __attribute__((always_inline)) void wgrad_block(const Layer* L, i32 m, i32 pos, i32 co0, i32 k0,
                                                              i32 kn) {
  const i32 cin8 = round8(L->cin), cout4 = round4(L->cout), T = L->tiles;
  const f32* M = L->bias + pos * m_pos(L->cout, T) + k0 * cout4 + co0;
  for (i32 b = 0; b < cin8 / NR; b++) {
    f32* dU = L->out + (pos * cout4 + co0) * cin8 + b * NR;
    v128_t acc[MR][2];
#pragma clang loop unroll(full)
    for (i32 p = 0; p < MR; p++) {
      if (p < m) {
        acc[p][0] = k0 ? wasm_v128_load(dU + p * cin8) : F32(0);
        acc[p][1] = k0 ? wasm_v128_load(dU + p * cin8 + 4) : F32(0);
      }
    }
    multiply_add(acc, m, M, 1, cout4, L->weight + pos * v_pos(L->vchannels, T) + b * v_block(T) + k0 * NR, kn);
#pragma clang loop unroll(full)
    for (i32 p = 0; p < MR; p++) {
      if (p < m) {
        wasm_v128_store(dU + p * cin8, acc[p][0]);
        wasm_v128_store(dU + p * cin8 + 4, acc[p][1]);
      }
    }
  }
}

// OP_WGRAD_GEMM: positions [p0, p1) of dU' (out) from V' (weight) and M' (bias).
static void wgrad_gemm(const Layer* L, i32 p0, i32 p1) {
  const i32 cout4 = round4(L->cout);
  for (i32 pos = p0; pos < p1; pos++) {
    for (i32 k0 = 0; k0 < L->tiles; k0 += KC) {
      const i32 kn = L->tiles - k0 < KC ? L->tiles - k0 : KC;
      for (i32 co0 = 0; co0 < cout4; co0 += MR) {
        switch (cout4 - co0 < MR ? cout4 - co0 : MR) {
          case 6: wgrad_block(L, 6, pos, co0, k0, kn); break;
          case 5: wgrad_block(L, 5, pos, co0, k0, kn); break;
          case 4: wgrad_block(L, 4, pos, co0, k0, kn); break;
          case 3: wgrad_block(L, 3, pos, co0, k0, kn); break;
          case 2: wgrad_block(L, 2, pos, co0, k0, kn); break;
          default: wgrad_block(L, 1, pos, co0, k0, kn); break;
        }
      }
    }
  }
}

// G'x for 6 values at p[0], ..., p[5s]: 3 values.
static inline __attribute__((always_inline)) void filter_1d(const f32* p, i32 s, v128_t* y) {
  const v128_t x0 = wasm_v128_load(p), x1 = wasm_v128_load(p + s), x2 = wasm_v128_load(p + 2 * s);
  const v128_t x3 = wasm_v128_load(p + 3 * s), x4 = wasm_v128_load(p + 4 * s), x5 = wasm_v128_load(p + 5 * s);
  const v128_t a = ADD(x1, x2), b = SUB(x2, x1), c = ADD(x3, x4), d = SUB(x3, x4);
  y[0] = MADD(F32(1.0f / 24), c, MADD(F32(-1.0f / 6), a, MUL(F32(0.25f), x0)));
  y[1] = MADD(F32(1.0f / 12), d, MUL(F32(1.0f / 6), b));
  y[2] = ADD(MUL(F32(1.0f / 6), SUB(c, a)), x5);
}

// OP_WGRAD_FINAL: dW [3][3][real_cin][cout] (grad) = G' dU G for output channels [c0, c1) from dU'
// (in), 4 input channels at a time; the thread that has channel 0 also writes the bias gradient,
// the sum over tiles of M'[7].
static void wgrad_final(const Layer* L, i32 t, i32 c0, i32 c1) {
  const i32 cin8 = round8(L->cin), cout = L->cout, cout4 = round4(cout), rc = L->real_cin;
  f32* Tb = L->scratch + t * L->scratch_floats;  // [6][3][4]
  for (i32 co = c0; co < c1; co++) {
    for (i32 ci = 0; ci < rc; ci += 4) {
      for (i32 a = 0; a < 6; a++) {
        v128_t y[3];
        filter_1d(L->in + (6 * a * cout4 + co) * cin8 + ci, cout4 * cin8, y);
        for (i32 k = 0; k < 3; k++) wasm_v128_store(Tb + 4 * (3 * a + k), y[k]);
      }
      for (i32 kx = 0; kx < 3; kx++) {
        v128_t y[3];
        filter_1d(Tb + 4 * kx, 12, y);
        for (i32 ky = 0; ky < 3; ky++) {
          f32* dw = L->grad + ((3 * ky + kx) * rc + ci) * cout + co;
          dw[0] = wasm_f32x4_extract_lane(y[ky], 0);
          if (ci + 1 < rc) dw[cout] = wasm_f32x4_extract_lane(y[ky], 1);
          if (ci + 2 < rc) dw[2 * cout] = wasm_f32x4_extract_lane(y[ky], 2);
          if (ci + 3 < rc) dw[3 * cout] = wasm_f32x4_extract_lane(y[ky], 3);
        }
      }
    }
  }
  if (c0 > 0 || c1 == c0) return;
  for (i32 c = 0; c < cout; c += 4) {
    const f32* m = L->bias + 7 * m_pos(cout, L->tiles) + c;
    v128_t sum = F32(0);
    for (i32 k = 0; k < L->tiles; k++) sum = ADD(sum, wasm_v128_load(m + k * cout4));
    store_lanes(L->bias_grad + c, sum, cout - c);
  }
}

// Tap `tap` of the packed conv's filters from input channel ci to output channels [co, co + 4),
// zero past the source's channels.
static inline __attribute__((always_inline)) v128_t pack_tap(const Layer* L, i32 tap, i32 ci, i32 co) {
  const i32 sci = L->real_cin, sco = L->ics;
  if (!L->lrelu) return ci < sci && co < sco ? load_upto(L->in + (tap * sci + ci) * sco + co, sco - co) : F32(0);
  // the input-gradient conv: the source's filter flipped, its channels swapped
  const f32* p = L->in + (8 - tap) * sci * sco + co * sco + ci;
  if (ci >= sco || co >= sci) return F32(0);
  return wasm_f32x4_make(p[0], co + 1 < sci ? p[sco] : 0, co + 2 < sci ? p[2 * sco] : 0, co + 3 < sci ? p[3 * sco] : 0);
}

// OP_PACK: the Winograd weights U = GgG' (out, [36][cout/8][cin][8], zero past the source's
// channels) of the conv with cin x cout channels, from HWIO weights at `in` ([3][3][real_cin][ics]);
// with lrelu set, of its input-gradient conv: filters flipped, input and output channels swapped.
// Input channels [c0, c1), 4 output channels at a time (scalar code took 0.35 s of a training step).
static void pack_rows(const Layer* L, i32 c0, i32 c1) {
  const i32 cin = L->cin, blocks = (L->cout + NR - 1) / NR, step = blocks * cin * NR;
  const v128_t q = F32(1.0f / 4), s = F32(-1.0f / 6), e = F32(1.0f / 12), f = F32(1.0f / 24), s6 = F32(1.0f / 6);
  for (i32 ci = c0; ci < c1; ci++) {
    for (i32 co = 0; co < NR * blocks; co += 4) {
      v128_t gg[18];
#pragma clang loop unroll(full)
      for (i32 j = 0; j < 3; j++) {
        const v128_t a = pack_tap(L, j, ci, co), b = pack_tap(L, 3 + j, ci, co), c = pack_tap(L, 6 + j, ci, co);
        gg[j] = MUL(q, a), gg[3 + j] = MUL(s, ADD(ADD(a, b), c)), gg[6 + j] = MUL(s, ADD(SUB(a, b), c));
        gg[9 + j] = ADD(ADD(MUL(f, a), MUL(e, b)), MUL(s6, c));
        gg[12 + j] = ADD(SUB(MUL(f, a), MUL(e, b)), MUL(s6, c)), gg[15 + j] = c;
      }
      f32* u = L->out + ((co / NR) * cin + ci) * NR + co % NR;
#pragma clang loop unroll(full)
      for (i32 i = 0; i < 6; i++) {
        const v128_t a = gg[3 * i], b = gg[3 * i + 1], c = gg[3 * i + 2];
        wasm_v128_store(u + (6 * i) * step, MUL(q, a));
        wasm_v128_store(u + (6 * i + 1) * step, MUL(s, ADD(ADD(a, b), c)));
        wasm_v128_store(u + (6 * i + 2) * step, MUL(s, ADD(SUB(a, b), c)));
        wasm_v128_store(u + (6 * i + 3) * step, ADD(ADD(MUL(f, a), MUL(e, b)), MUL(s6, c)));
        wasm_v128_store(u + (6 * i + 4) * step, ADD(SUB(MUL(f, a), MUL(e, b)), MUL(s6, c)));
        wasm_v128_store(u + (6 * i + 5) * step, c);
      }
    }
  }
}

// OP_ADAM's record: Adam in torch.optim.Adam's order of operations, then the EMA, over n values
// (a multiple of 4), threads splitting them in blocks of 4.
typedef struct {
  i32 op;
  f32* p;
  const f32* g;
  f32* m;
  f32* v;
  f32* e;
  i32 n;
  f32 c1, beta2, c2;  // 1 - beta1, beta2, 1 - beta2
  f32 step, bc2;      // lr / (1 - beta1^t), sqrt(1 - beta2^t)
  f32 eps, decay, keep;  // keep: 1 - decay
} Adam;

static void adam(const Adam* A, i32 q0, i32 q1) {
  const v128_t c1 = F32(A->c1), beta2 = F32(A->beta2), c2 = F32(A->c2), step = F32(A->step);
  const v128_t bc2 = F32(A->bc2), eps = F32(A->eps), decay = F32(A->decay), keep = F32(A->keep);
  for (i32 i = 4 * q0; i < 4 * q1; i += 4) {
    const v128_t g = wasm_v128_load(A->g + i);
    v128_t m = wasm_v128_load(A->m + i), v = wasm_v128_load(A->v + i), p = wasm_v128_load(A->p + i);
    m = ADD(m, MUL(SUB(g, m), c1));
    v = ADD(MUL(v, beta2), MUL(MUL(g, g), c2));
    const v128_t denom = ADD(wasm_f32x4_div(wasm_f32x4_sqrt(v), bc2), eps);
    p = SUB(p, MUL(wasm_f32x4_div(m, denom), step));
    wasm_v128_store(A->m + i, m);
    wasm_v128_store(A->v + i, v);
    wasm_v128_store(A->p + i, p);
    wasm_v128_store(A->e + i, ADD(MUL(wasm_v128_load(A->e + i), decay), MUL(p, keep)));
  }
}

// Runs thread `t` of `threads`' share of a layer: a contiguous band of output rows.
__attribute__((export_name("run_layer"))) void run_layer(const Layer* L, i32 t, i32 threads) {
  const i32 op = L->op;
  if (op == OP_ADAM) {
    const Adam* A = (const Adam*)L;
    const i32 quads = A->n / 4;
    adam(A, (i32)((long long)quads * t / threads), (i32)((long long)quads * (t + 1) / threads));
    return;
  }
  const i32 rows = op == OP_UPSAMPLE                                ? 2 * L->h
                   : op == OP_WINOGRAD || op == OP_WGRAD_TRANSFORM ? (L->h + 3) / 4
                   : op == OP_WGRAD_GEMM                            ? 36
                   : op == OP_WGRAD_FINAL                           ? L->cout
                   : op == OP_PACK                                  ? L->cin
                                                                    : L->h;
  const i32 y0 = (i32)((long long)rows * t / threads), y1 = (i32)((long long)rows * (t + 1) / threads);
  switch (op) {
    case OP_UPSAMPLE: upsample_rows(L, y0, y1); break;
    case OP_WINOGRAD: winograd_rows(L, t, y0, y1); break;
    case OP_UPSAMPLE_GRAD: upsample_grad_rows(L, y0, y1); break;
    case OP_ADD: add_rows(L, y0, y1); break;
    case OP_WGRAD_TRANSFORM: wgrad_transform_rows(L, t, y0, y1); break;
    case OP_WGRAD_GEMM: wgrad_gemm(L, y0, y1); break;
    case OP_WGRAD_FINAL: wgrad_final(L, t, y0, y1); break;
    case OP_PACK: pack_rows(L, y0, y1); break;
    default: conv_rows(L, y0, y1); break;
  }
}
