/**
 * A strict reader of the Prometheus text format (0.0.4) for the tests: every
 * line is a HELP or TYPE comment or a sample, every sample's family has a
 * TYPE, label values are unescaped; anything else throws.
 */
export type Samples = Map<string, number>;

const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*';
const SAMPLE = new RegExp(`^(${NAME})(?:\\{(.*)\\})? (\\S+)(?: -?\\d+)?$`);
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/y;
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

function key(name: string, labels: Record<string, string>): string {
  const l = Object.keys(labels)
    .sort()
    .map((k) => `${k}=${JSON.stringify(labels[k])}`)
    .join(',');
  return `${name}{${l}}`;
}

function parseValue(v: string): number {
  if (v === '+Inf') return Infinity;
  if (v === '-Inf') return -Infinity;
  if (v === 'NaN') return NaN;
  const n = Number(v);
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(v) || Number.isNaN(n)) throw new Error(`bad sample value ${v}`);
  return n;
}

export function parsePrometheus(text: string): Samples {
  const samples: Samples = new Map();
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (line.startsWith('#')) {
      const m = new RegExp(`^# (HELP|TYPE) (${NAME}) (.*)$`).exec(line);
      if (m === null) throw new Error(`bad comment line: ${line}`);
      if (m[1] === 'TYPE') {
        if (!TYPES.has(m[3]!)) throw new Error(`bad type: ${line}`);
        if (types.has(m[2]!)) throw new Error(`second TYPE for ${m[2]}`);
        types.set(m[2]!, m[3]!);
      }
      continue;
    }
    const m = SAMPLE.exec(line);
    if (m === null) throw new Error(`bad sample line: ${line}`);
    const name = m[1]!;
    const family = [...types.keys()].find((f) => name === f || (/_(bucket|sum|count|total|created)$/.test(name) && name.replace(/_(bucket|sum|count|total|created)$/, '') === f));
    if (family === undefined) throw new Error(`sample without a TYPE: ${line}`);
    const labels: Record<string, string> = {};
    const body = m[2] ?? '';
    LABEL.lastIndex = 0;
    while (LABEL.lastIndex < body.length) {
      const start = LABEL.lastIndex;
      const l = LABEL.exec(body);
      if (l === null || l.index !== start) throw new Error(`bad labels: ${line}`);
      labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
    }
    const k = key(name, labels);
    if (samples.has(k)) throw new Error(`sample twice: ${line}`);
    samples.set(k, parseValue(m[3]!));
  }
  return samples;
}

export function metricValue(samples: Samples, name: string, labels: Record<string, string> = {}): number | undefined {
  return samples.get(key(name, labels));
}

/** Every sample of a metric whatever its labels, summed. */
export function metricSum(samples: Samples, name: string): number {
  let n = 0;
  for (const [k, v] of samples) if (k.startsWith(`${name}{`)) n += v;
  return n;
}
