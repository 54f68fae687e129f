/**
 * GEMM engines for the forward pass. `js` is the blocked plain-JavaScript matmul (the reference the
 * others are tested against); `onnx` runs each linear as a one-node onnxruntime Gemm (transB) over
 * the weight as the checkpoint lays it out, [N, K] rows in f32, held once and passed as an input at
 * each run, and a SwiGLU MLP's gate, up and silu(gate) * up as one session.
 */
import { matmul, silu } from './ops.js';
import { attentionModel, linearModel, swiGluModel } from './onnx.js';
import { ReusedBuffers } from './reused.js';

/** One linear's weights as the forward pass takes them: W [N, K] in f32 (or a loader of its rows), bias, input transform. */
export interface LinearWeights {
  w: Float32Array;
  N: number;
  K: number;
  /**
   * Instead of `w` (then empty): writes W [N, K] as f32 into `into` (N·K values), reading the source
   * a chunk of rows at a time, so the engine's own buffer (or a fused group's rows) is the only f32
   * copy that ever exists.
   */
  writeRows?: (into: Float32Array) => Promise<void>;
  b?: Float32Array;
  /** Applied to the input before the matmul: pre_quant_scale and activation fake-quantization of an export. */
  input?: (x: Float32Array, T: number) => Float32Array;
}

export interface PreparedLinear {
  /**
   * y [T, N] = input(x) [T, K] W^T + b. The array may be the one the previous run returned (an
   * engine reuses its output buffer rather than leave ~100 MB of garbage per sample at 8B): read it
   * before the next run.
   */
  run(x: Float32Array, T: number): Promise<Float32Array>;
  release(): Promise<void>;
}

/** A SwiGLU MLP's first half prepared as one unit: act [T, I] = silu(x Wg^T) * (x Wu^T). */
export interface PreparedSwiGlu {
  /** act [T, I] (reused by the next run, as PreparedLinear.run's output is). */
  act(x: Float32Array, T: number): Promise<Float32Array>;
  /** gate and up outputs [T, I] each, for callers that need them apart. */
  run(x: Float32Array, T: number): Promise<[Float32Array, Float32Array]>;
  release(): Promise<void>;
}

export interface GemmEngine {
  name: string;
  /**
   * The engine may keep reading `l.w` until release (do not change it before); a lazily loaded
   * linear (`writeRows`) is written into a buffer of the engine's.
   */
  prepare(l: LinearWeights): Promise<PreparedLinear>;
  /**
   * gate and up of a SwiGLU MLP (same K, no bias or input transform) as one unit, when the engine
   * can run the element-wise silu(g) * u next to its GEMMs (else the layer does it in JavaScript).
   */
  prepareSwiGlu?(gate: LinearWeights, up: LinearWeights): Promise<PreparedSwiGlu>;
  /**
   * A [n] buffer, one a released linear gave back when there is one of that length: the rows of a
   * fused group for prepare (which then owns it) or a group's outputs. Layers of one model share
   * shapes, so each layer is written into the previous one's buffers, whenever the garbage
   * collector comes.
   */
  takeBuffer?(n: number): Float32Array;
  /** Buffers for takeBuffer to hand out again (a released group's outputs). */
  giveBack?(...buffers: Float32Array[]): void;
  /** Lets go of the buffers (and engine state, such as sessions no linear uses) kept for reuse (after the last layer). */
  dropSpareBuffers?(): void;
  /** Causal GQA attention for T tokens, if the engine has it (else the JavaScript one is used); its output may be reused as a run's is. */
  attention?(T: number, nH: number, nKV: number, d: number): Promise<(q: Float32Array, k: Float32Array, v: Float32Array) => Promise<Float32Array>>;
}

/** W [N, K] of a linear: its `w`, or its rows written into `into` (a new array when not given). */
export async function rowsOf(l: LinearWeights, into?: Float32Array): Promise<Float32Array> {
  if (!l.writeRows || l.w.length === l.N * l.K) return l.w;
  const w = into ?? new Float32Array(l.N * l.K);
  await l.writeRows(w);
  return w;
}

export const jsGemm: GemmEngine = {
  name: 'js',
  async prepare(l) {
    const w = await rowsOf(l);
    return {
      run: async (x, T) => matmul(l.input ? l.input(x, T) : x, T, l.K, w, l.N, l.b),
      release: async () => undefined,
    };
  },
};

/** silu(g) * u element-wise, as the JavaScript layers compute it: silu rounded to f32, then the product. */
export function siluMul(g: Float32Array, u: Float32Array, out: Float32Array): Float32Array {
  for (let i = 0; i < out.length; i++) out[i] = Math.fround(silu(g[i]!)) * u[i]!;
  return out;
}

type Ort = typeof import('onnxruntime-node');
let ortModule: Promise<Ort | undefined> | undefined;

/** onnxruntime-node if it can be loaded on this machine, else undefined. */
export function loadOrt(): Promise<Ort | undefined> {
  ortModule ??= import('onnxruntime-node').then(
    (m) => m as Ort,
    () => undefined,
  );
  return ortModule;
}

export function onnxGemm(ort: Ort, threads: number): GemmEngine {
  const attention = new Map<string, Promise<import('onnxruntime-node').InferenceSession>>();
  const attentionBuffers = new Map<string, ReusedBuffers<Record<'y' | 'qj' | 'kj' | 'vj' | 'yj', Float32Array>>>();
  // onnxruntime's CPU arena keeps a session's peak buffers for as long as the session lives; without
  // it calibration measured 23% slower. The GEMM outputs go to buffers of ours. The attention
  // session lives the whole run and runs one KV head (and its query heads) at a time, so what its
  // arena keeps is one head group's scores (4 x 4 MiB at 8B and 512 tokens) instead of all eight
  // groups' (4 x 32 MiB). Measured at 8B shapes, 512 tokens: same output bits, 32-37 ms against
  // 35-73 ms for all heads in one run; without an arena 264 ms.
  // Each session has its own pool of intra-op threads, which by default spin for a while after a
  // run: a layer runs five sessions one after another, so on 2 cores the previous session's
  // spinning thread took CPU from the next one's. Without spinning, 8B layer at 2 threads: 756-758
  // ms against 827-846 (same machine, alternating runs).
  const options = { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all' as const, extra: { session: { intra_op: { allow_spinning: '0' } } } };
  // GEMM sessions by graph (weights are inputs, so a graph is its shapes): every layer of a model,
  // and every expert of a layer, runs on the same few sessions. A fresh session's first two runs
  // are slower (onnxruntime plans its memory on the first; measured 525-567 ms against 350-430 for a
  // SwiGLU at 8B shapes), and creating one per expert costs more than its GEMMs at small shapes.
  // An entry counts the prepared linears using it; dropSpareBuffers releases the unused ones.
  const sessions = new Map<string, { session: Promise<import('onnxruntime-node').InferenceSession>; users: number }>();
  const useSession = (key: string, model: () => Uint8Array) => {
    let e = sessions.get(key);
    if (!e) {
      e = { session: ort.InferenceSession.create(model(), options), users: 0 };
      sessions.set(key, e);
    }
    e.users++;
    const entry = e;
    return { session: entry.session, done: () => void entry.users-- };
  };
  // weight and output buffers of released linears, by length (see takeBuffer): left to the garbage
  // collector, the previous layer's measured still half there as the next one loaded. Only buffers
  // this engine handed out go back to it (a caller's own `w` stays the caller's).
  const spare = new Map<number, Float32Array[]>();
  const ours = new WeakSet<Float32Array>();
  const takeBuffer = (n: number) => {
    const b = spare.get(n)?.pop() ?? new Float32Array(n);
    ours.add(b);
    return b;
  };
  const giveBack = (...buffers: Float32Array[]) => {
    for (const b of buffers) if (ours.has(b)) spare.get(b.length)?.push(b) ?? spare.set(b.length, [b]);
  };
  const weightRows = (l: LinearWeights) => rowsOf(l, l.writeRows && l.w.length !== l.N * l.K ? takeBuffer(l.N * l.K) : undefined);
  return {
    takeBuffer,
    giveBack,
    dropSpareBuffers: () => {
      spare.clear();
      for (const [key, e] of sessions) {
        if (e.users > 0) continue;
        sessions.delete(key);
        void e.session.then((s) => s.release());
      }
    },
    name: `onnxruntime (${threads} thread${threads > 1 ? 's' : ''})`,
    async attention(T, nH, nKV, d) {
      const g = nH / nKV; // query heads per KV head
      const key = `${T},${g},${d}`;
      let session = attention.get(key);
      if (!session) {
        session = ort.InferenceSession.create(attentionModel(T, g, 1, d), options);
        attention.set(key, session);
      }
      const s = await session;
      // [T, nH*d] output; one head group's q, k, v and output
      const shape = `${T},${nH},${nKV},${d}`;
      if (!attentionBuffers.has(shape)) {
        attentionBuffers.set(shape, new ReusedBuffers(() => ({ y: new Float32Array(T * nH * d), qj: new Float32Array(T * g * d), kj: new Float32Array(T * d), vj: new Float32Array(T * d), yj: new Float32Array(T * g * d) })));
      }
      const reuse = attentionBuffers.get(shape)!;
      return (q, k, v) =>
        reuse.use('', async ({ y, qj, kj, vj, yj }) => {
          // KV head j and its query heads j*g .. j*g+g-1: contiguous columns of q and y
          for (let j = 0; j < nKV; j++) {
            for (let t = 0; t < T; t++) {
              qj.set(q.subarray((t * nH + j * g) * d, (t * nH + j * g + g) * d), t * g * d);
              kj.set(k.subarray((t * nKV + j) * d, (t * nKV + j + 1) * d), t * d);
              vj.set(v.subarray((t * nKV + j) * d, (t * nKV + j + 1) * d), t * d);
            }
            await s.run(
              {
                Q: new ort.Tensor('float32', qj, [T, g * d]),
                K: new ort.Tensor('float32', kj, [T, d]),
                V: new ort.Tensor('float32', vj, [T, d]),
              },
              { Y: new ort.Tensor('float32', yj, [T, g * d]) },
            );
            for (let t = 0; t < T; t++) y.set(yj.subarray(t * g * d, (t + 1) * g * d), (t * nH + j * g) * d);
          }
          return y;
        });
    },
    async prepare(l) {
      const { N, K, b, input } = l;
      // Gemm with transB over W as stored: measured 1.1-1.3x faster than MatMul over W^T at 8B
      // shapes (1 and 2 threads), and no transposed copy to make
      const w = await weightRows(l);
      const W = new ort.Tensor('float32', w, [N, K]);
      // a biased linear's graph holds its bias: a session of its own
      const use = b ? { session: ort.InferenceSession.create(linearModel(K, N, b), options), done: () => undefined } : useSession(`linear ${K} ${N}`, () => linearModel(K, N));
      const session = await use.session;
      // the output in a buffer of ours, reused from run to run: left to onnxruntime, it would come
      // from the session's arena, which keeps its peak (58 MB for gate|up at 8B) until the session
      // is released
      const output = new ReusedBuffers((key) => takeBuffer(Number(key) * N));
      return {
        run: (x, T) =>
          output.use(String(T), async (y) => {
            const xin = input ? input(x, T) : x;
            await session.run({ X: new ort.Tensor('float32', xin, [T, K]), W }, { Y: new ort.Tensor('float32', y, [T, N]) });
            return y;
          }),
        release: async () => {
          if (b) await session.release();
          else use.done();
          const y = output.takeBack();
          giveBack(w, ...(y ? [y] : []));
        },
      };
    },
    async prepareSwiGlu(gate, up) {
      const { N: I, K } = gate;
      if (up.N !== I || up.K !== K || gate.b || up.b || gate.input || up.input) throw new Error('prepareSwiGlu: gate and up must have one shape and no bias or input transform');
      // gate's rows, then up's: one [I, K] f32 buffer each, written one after the other
      const wg = await weightRows(gate);
      const wu = await weightRows(up);
      const Wg = new ort.Tensor('float32', wg, [I, K]), Wu = new ort.Tensor('float32', wu, [I, K]);
      const use = useSession(`swiglu ${K} ${I}`, () => swiGluModel(K, I, 'act'));
      const session = await use.session;
      let apart: { session: Promise<import('onnxruntime-node').InferenceSession>; done: () => void } | undefined; // gate and up outputs, made when asked for
      const act = new ReusedBuffers((key) => takeBuffer(Number(key) * I));
      const both = new ReusedBuffers((key) => [takeBuffer(Number(key) * I), takeBuffer(Number(key) * I)] as [Float32Array, Float32Array]);
      return {
        act: (x, T) =>
          act.use(String(T), async (a) => {
            await session.run({ X: new ort.Tensor('float32', x, [T, K]), Wg, Wu }, { A: new ort.Tensor('float32', a, [T, I]) });
            return a;
          }),
        run: (x, T) =>
          both.use(String(T), async (gu) => {
            apart ??= useSession(`swiglu-apart ${K} ${I}`, () => swiGluModel(K, I, 'apart'));
            await (await apart.session).run({ X: new ort.Tensor('float32', x, [T, K]), Wg, Wu }, { G: new ort.Tensor('float32', gu[0], [T, I]), U: new ort.Tensor('float32', gu[1], [T, I]) });
            return gu;
          }),
        release: async () => {
          use.done();
          apart?.done();
          const a = act.takeBack();
          giveBack(wg, wu, ...(a ? [a] : []), ...(both.takeBack() ?? []));
        },
      };
    },
  };
}

/**
 * Writes bf16 values (their bits) into `into` as f32: a bf16 is the top half of an f32, so each is
 * its bits shifted up 16, with no f32 copy of the source in between (at 8B a layer's load would
 * otherwise leave 2.5 GB of such copies to the garbage collector, 12 MB at a time).
 */
export function bf16RowsInto(into: Float32Array, bits: Uint16Array): Float32Array {
  const out = new Uint32Array(into.buffer, into.byteOffset, bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = bits[i]! << 16;
  return into;
}

/** The fastest engine available: onnxruntime when it loads, else plain JavaScript. */
export async function defaultGemm(threads: number): Promise<GemmEngine> {
  const ort = await loadOrt();
  return ort ? onnxGemm(ort, threads) : jsGemm;
}
