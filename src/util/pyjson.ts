/**
 * JSON as Python's `json.dump(obj, f, indent=N)` writes it (ModelOpt writes config.json and
 * hf_quant_config.json this way): ", " / ": " separators, non-ASCII escaped, and floats keeping
 * Python's spelling (10000.0, 1e-05). Numbers parsed from a source file keep their literal text,
 * so a config that Python wrote comes back out unchanged.
 */

/** A number that remembers how it was spelled in the source file. */
export class RawNumber {
  constructor(readonly text: string) {}
  valueOf(): number {
    return Number(this.text);
  }
  toJSON(): number {
    return Number(this.text);
  }
}

/** A float written by rxquant that Python would spell with a ".0" (e.g. 1.0). */
export class PyFloat {
  constructor(readonly value: number) {}
  toJSON(): number {
    return this.value;
  }
}

export type PyValue = null | boolean | string | number | RawNumber | PyFloat | PyValue[] | { [k: string]: PyValue };

/** Parses JSON keeping number literals as RawNumber. */
export function parsePreservingNumbers(text: string): PyValue {
  let i = 0;
  const ws = () => {
    while (i < text.length && ' \t\n\r'.includes(text[i]!)) i++;
  };
  const fail = (msg: string): never => {
    throw new SyntaxError(`${msg} at position ${i}`);
  };
  const value = (): PyValue => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const obj: Record<string, PyValue> = {};
      ws();
      if (text[i] === '}') {
        i++;
        return obj;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail('expected a string key');
        const k = str();
        ws();
        if (text[i++] !== ':') fail('expected ":"');
        obj[k] = value();
        ws();
        if (text[i] === ',') i++;
        else if (text[i] === '}') {
          i++;
          return obj;
        } else fail('expected "," or "}"');
      }
    }
    if (c === '[') {
      i++;
      const arr: PyValue[] = [];
      ws();
      if (text[i] === ']') {
        i++;
        return arr;
      }
      for (;;) {
        arr.push(value());
        ws();
        if (text[i] === ',') i++;
        else if (text[i] === ']') {
          i++;
          return arr;
        } else fail('expected "," or "]"');
      }
    }
    if (c === '"') return str();
    for (const [lit, v] of [['true', true], ['false', false], ['null', null], ['NaN', NaN], ['Infinity', Infinity], ['-Infinity', -Infinity]] as const) {
      if (text.startsWith(lit, i)) {
        i += lit.length;
        return typeof v === 'number' ? new RawNumber(lit) : v;
      }
    }
    const m = /^-?\d+(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 64));
    if (!m) fail('unexpected character');
    i += m![0].length;
    return new RawNumber(m![0]);
  };
  const str = (): string => {
    const start = i;
    i++;
    while (i < text.length && text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
    i++;
    return JSON.parse(text.slice(start, i)) as string;
  };
  const v = value();
  ws();
  if (i !== text.length) fail('trailing characters');
  return v;
}

/** Python's repr of a float. */
export function pyFloat(x: number): string {
  if (Number.isNaN(x)) return 'NaN';
  if (!Number.isFinite(x)) return x > 0 ? 'Infinity' : '-Infinity';
  if (Number.isInteger(x) && Math.abs(x) < 1e16) return x.toFixed(1);
  const s = String(x); // shortest round-trip, like Python's repr
  const m = /^(-?[\d.]+)e([+-])(\d+)$/.exec(s);
  if (m) return `${m[1]}e${m[2]}${m[3]!.padStart(2, '0')}`;
  return s;
}

function encodeString(s: string): string {
  // JSON.stringify escapes control characters like Python; then escape non-ASCII (ensure_ascii=True)
  return JSON.stringify(s).replace(/[\u007f-\uffff]/g, (ch) => '\\u' + ch.charCodeAt(0).toString(16).padStart(4, '0'));
}

/** `json.dumps(value, indent=indent)`. */
export function pyDumps(value: PyValue, indent = 4, level = 0): string {
  const pad = ' '.repeat(indent * (level + 1));
  const end = ' '.repeat(indent * level);
  if (value === null) return 'null';
  if (value === true) return 'true';
  if (value === false) return 'false';
  if (typeof value === 'string') return encodeString(value);
  if (typeof value === 'number') return String(value);
  if (value instanceof RawNumber) return value.text;
  if (value instanceof PyFloat) return pyFloat(value.value);
  if (Array.isArray(value)) {
    if (value.length === 0) return '[]';
    return `[\n${value.map((v) => pad + pyDumps(v, indent, level + 1)).join(',\n')}\n${end}]`;
  }
  const entries = Object.entries(value);
  if (entries.length === 0) return '{}';
  return `{\n${entries.map(([k, v]) => `${pad}${encodeString(k)}: ${pyDumps(v, indent, level + 1)}`).join(',\n')}\n${end}}`;
}
