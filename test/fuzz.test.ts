/**
 * Header and index parsing under random mutation (fast-check, fixed seed): every mutated safetensors
 * header, header length and index file gives a typed rxquant error or a valid result, never a
 * crash, a hang or an allocation sized by the input; sizes past 2^53 are refused.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { cp, mkdtemp, readFile, rm, writeFile, chmod, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseHeader, parseHeaderLength, MAX_HEADER_LENGTH } from '../src/safetensors/header.js';
import { openCheckpoint, INDEX_FILE } from '../src/safetensors/checkpoint.js';
import { RxquantError, SafetensorsFormatError } from '../src/errors.js';
import { synthetic } from './helpers.js';

const SEED = 20261206;

/** The header bytes and data length of a real safetensors file. */
async function realHeader(path: string): Promise<{ json: Uint8Array; dataLength: number }> {
  const b = await readFile(path);
  const n = Number(b.readBigUInt64LE(0));
  return { json: new Uint8Array(b.subarray(8, 8 + n)), dataLength: b.length - 8 - n };
}

/** Either a result, or a typed error of the given class: anything else fails the property. */
function typedOrOk(f: () => unknown, type: new (...a: never[]) => Error): void {
  try {
    f();
  } catch (e) {
    if (!(e instanceof type)) throw new Error(`untyped failure: ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
  }
}

/** JSON values that probe the validator: huge, negative, fractional and unsafe numbers, wrong types. */
const nasty = fc.oneof(
  fc.constantFrom(2 ** 53, 2 ** 53 + 2, 2 ** 64, -1, 0.5, 1e308, -0, 'F32', 'BF16', 'X', null, true, [], {}, [2 ** 27, 2 ** 27], [0], [2 ** 31, 2 ** 31, 2 ** 31]),
  fc.integer(),
  fc.jsonValue({ maxDepth: 2 }),
  fc.array(fc.oneof(fc.integer({ min: -2, max: 2 ** 40 }), fc.double()), { maxLength: 4 }),
);

describe('fuzzed safetensors headers', () => {
  let headers: { json: Uint8Array; dataLength: number }[];
  beforeAll(async () => {
    headers = [await realHeader(join(synthetic('llama31'), 'model.safetensors')), await realHeader(join(synthetic('deepseek_v3_fp8'), 'model-00001-of-00002.safetensors'))];
  });

  it('byte edits, truncations and insertions: a typed error or a valid header', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 1 }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }),
        fc.nat(),
        fc.uint8Array({ maxLength: 16 }),
        fc.integer({ min: -64, max: 64 }),
        (which, edits, cut, insert, sizeDelta) => {
          const h = headers[which]!;
          let b: Uint8Array = h.json.slice();
          for (const [pos, v] of edits) b[pos % b.length] = v;
          const at = cut % (b.length + 1);
          b = new Uint8Array([...b.subarray(0, at), ...insert, ...b.subarray(at + (insert.length ? 0 : Math.min(3, b.length - at)))]);
          typedOrOk(() => parseHeader(b, b.length, 8 + b.length + Math.max(0, h.dataLength + sizeDelta), 'fuzz.safetensors'), SafetensorsFormatError);
        },
      ),
      { seed: SEED, numRuns: 3000 },
    );
  });

  it('one field of one tensor (or the metadata) replaced by anything: a typed error or a valid header', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 1 }), fc.nat(), fc.constantFrom('dtype', 'shape', 'data_offsets', 'extra', '__metadata__'), nasty, (which, pick, field, value) => {
        const h = headers[which]!;
        const obj = JSON.parse(new TextDecoder().decode(h.json));
        const names = Object.keys(obj).filter((k) => k !== '__metadata__');
        if (field === '__metadata__') obj.__metadata__ = value;
        else obj[names[pick % names.length]!][field] = value;
        const b = new TextEncoder().encode(JSON.stringify(obj));
        typedOrOk(() => parseHeader(b, b.length, 8 + b.length + h.dataLength, 'fuzz.safetensors'), SafetensorsFormatError);
      }),
      { seed: SEED, numRuns: 3000 },
    );
  });

  it('header lengths: any 8 bytes against any file size give a typed error or a length inside the file and the limit', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 8, maxLength: 8 }), fc.integer({ min: 0, max: 2 ** 40 }), (prefix, size) => {
        try {
          const n = parseHeaderLength(prefix, size, 'fuzz.safetensors');
          expect(n).toBeGreaterThan(0);
          expect(n).toBeLessThanOrEqual(Math.min(size - 8, MAX_HEADER_LENGTH));
        } catch (e) {
          if (!(e instanceof SafetensorsFormatError)) throw e;
        }
      }),
      { seed: SEED, numRuns: 3000 },
    );
  });

  it('a shape whose byte size passes 2^53 is refused as such', () => {
    const b = new TextEncoder().encode(JSON.stringify({ w: { dtype: 'F32', shape: [2 ** 26, 2 ** 26, 4], data_offsets: [0, 0] } }));
    expect(() => parseHeader(b, b.length, 8 + b.length, 'big.safetensors')).toThrow(/needs more than 2\^53 bytes/);
  });
});

describe('fuzzed index files', () => {
  let dir: string;
  let index: { metadata: unknown; weight_map: Record<string, string> };
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rxq-fuzz-'));
    await cp(synthetic('deepseek_v3_fp8'), dir, { recursive: true });
    for (const f of await readdir(dir)) await chmod(join(dir, f), 0o644);
    index = JSON.parse(await readFile(join(dir, INDEX_FILE), 'utf8'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('entries renamed, pointed elsewhere, removed or replaced by anything: a typed error or a consistent checkpoint', async () => {
    const names = Object.keys(index.weight_map);
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.tuple(fc.nat(), fc.oneof(fc.constantFrom('model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', '../x', 'missing.safetensors', '', '/etc/passwd'), nasty, fc.string()), fc.boolean()),
          { minLength: 1, maxLength: 4 },
        ),
        fc.oneof(fc.constant(undefined), nasty),
        async (edits, replaceMap) => {
          const wm: Record<string, unknown> = { ...index.weight_map };
          for (const [i, v, remove] of edits) {
            const n = names[i % names.length]!;
            if (remove) delete wm[n];
            else wm[n] = v;
          }
          await writeFile(join(dir, INDEX_FILE), JSON.stringify({ metadata: index.metadata, weight_map: replaceMap === undefined ? wm : replaceMap }));
          try {
            const ck = await openCheckpoint(dir);
            for (const [name, shard] of ck.weightMap) expect(ck.tensors.get(name)!.file.name).toBe(shard);
            await ck.close();
          } catch (e) {
            if (!(e instanceof RxquantError)) throw e;
          }
        },
      ),
      { seed: SEED, numRuns: 400 },
    );
  });
});
